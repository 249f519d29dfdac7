"""``leanlm evolve``: run, or resume, the self-evolution loop; a table per generation, a summary at the end."""
from __future__ import annotations

import argparse
import dataclasses
import logging

log = logging.getLogger(__name__)
SKIP = ("spec",)   # the positional argument


def register(subparsers) -> None:
    from ..config import add_arguments
    from .config import EvolveConfig

    p = subparsers.add_parser("evolve", help="self-evolution: probe, plan, generate, solve, judge, train, gate",
                              description="Defaults come from the preset of the spec (see leanlm/evolve/config.py "
                                          "PRESETS); options given here override them.")
    p.add_argument("spec", nargs="?", help="model to evolve: smollm2-135m, tiny-add, ...")
    p.add_argument("--out", help="run directory (created; an existing one with the same config is continued)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run with its saved config")
    p.add_argument("--json", metavar="OUT", help="also write the result document here")
    p.add_argument("--serve", action="store_true", help="also serve the run while it evolves (as `leanlm serve "
                   "RUN --follow`: each accepted generation is swapped in; --sampler openai then samples from it)")
    p.add_argument("--serve-port", type=int, default=8000, help="port of --serve (on 127.0.0.1)")
    p.add_argument("--sampler-api-key", help="--sampler openai: the endpoint's API key (never saved in the run; "
                   "default $LEANLM_SAMPLER_API_KEY or $OPENAI_API_KEY)")
    add_arguments(p, EvolveConfig, skip=SKIP)
    p.set_defaults(func=cmd_evolve)


def _overrides(args: argparse.Namespace) -> dict:
    from .config import EvolveConfig

    names = {f.name for f in dataclasses.fields(EvolveConfig)} - set(SKIP)
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def cmd_evolve(args: argparse.Namespace) -> int:
    from ..config import from_dict, to_dict
    from ..eval.results import document
    from ..report.tables import render_mapping
    from .config import preset
    from .lineage import load_config
    from .loop import resume, run

    show = _render_generation
    if getattr(args, "sampler_api_key", None):
        import os

        from .sampler import KEY_ENVS
        os.environ[KEY_ENVS[0]] = args.sampler_api_key
    if args.resume:
        over = {k: v for k, v in _overrides(args).items()
                if k in ("generations", "budget", "progress") or k.startswith("sampler")}
        server = _serve(args, args.resume)
        result = resume(args.resume, on_generation=show, **over)
        cfg_dict = to_dict(load_config(args.resume))
    else:
        if not args.spec or not args.out:
            raise ValueError("give a SPEC and --out RUN_DIR, or --resume RUN_DIR")
        base = preset(args.spec, safety_tune=bool(args.safety_tune), recipe=args.recipe)
        cfg = from_dict(type(base), {**to_dict(base), **_overrides(args), "spec": args.spec})
        server = _serve(args, args.out, cfg)
        result = run(cfg, args.out, on_generation=show)
        cfg_dict = to_dict(cfg)
    if server is not None:
        server.__exit__(None, None, None)
    from .dist import world
    if not world().main:               # data parallel: one process reports
        return 0
    render_mapping("evolve summary", result)
    if args.json:
        from ..fileio import atomic_write_json

        atomic_write_json(args.json, document("evolve", {"spec": cfg_dict["spec"]}, cfg_dict, result))
    return 0


def _serve(args: argparse.Namespace, run_dir: str, cfg=None):
    """``--serve``: the OpenAI-compatible server on this run, in this process (None without the flag)."""
    from .dist import world
    if not args.serve or not world().main:
        return None
    from ..serve.config import ServeConfig
    from ..serve.server import follow_in_background
    from .lineage import init_run

    if cfg is not None:
        init_run(run_dir, cfg)                 # run.json first: the server needs a run directory to follow
    server = follow_in_background(run_dir, ServeConfig(port=args.serve_port))
    import os

    from .sampler import URL_ENVS
    os.environ.setdefault(URL_ENVS[0], server.url + "/v1")   # --sampler openai without a URL samples from it
    return server


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def _render_generation(rec: dict) -> None:
    from rich.table import Table

    from ..report.tables import console

    m = rec["metrics"]
    t = Table(title=f"generation {rec['generation']} ({'accepted' if rec['accepted'] else 'rolled back'}, "
                    f"{rec.get('wall_s', 0):.0f} s)")
    for col in ("metric", "value"):
        t.add_column(col)
    for k in ("headline", "score", "retention", "ppl", "refusal_rate", "refusal_kept"):
        t.add_row(k, _fmt(m.get(k)))
    for k in ("score_strict", "transfer", "transfer_strict"):      # the code recipe's strict and transfer scores
        if k in m:
            t.add_row(k, _fmt(m[k]))
    for s, a in m["heldout"].items():
        t.add_row(f"held-out {s}", _fmt(a))
    for k, v in (rec.get("data") or {}).items():
        t.add_row(f"data {k}", _fmt(v))
    if rec.get("judge"):
        t.add_row("judge agreement / kappa", f"{_fmt(rec['judge']['agreement'])} / {_fmt(rec['judge']['kappa'])}")
    console.print(t)
    if rec.get("seconds"):
        console.print("  seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in rec["seconds"].items()))
    for d in rec.get("decisions", []):
        console.print(f"  - {d}")
