"""The issue-19 report of a safety-tuned evolve run: per generation (and the untuned model) held-out
accuracy strict and lenient, on today's held-out set and on the shifted one, refusal and over-refusal on
held-out prompts with paired bootstrap intervals against generation 0, perplexity on pydoc and the second
corpus, KL(gen || gen 0); optionally pass@1 / pass@8 (8 samples at T=0.8) of the untuned model,
generation 0 and the latest accepted generation.

    .venv/bin/python benchmarks/evolve_safe.py --run benchmarks/results/evolve_runs/smollm2-safe \
        [--passk 20] [--json benchmarks/results/evolve_smollm2_safe_report.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leanlm.config import to_dict  # noqa: E402
from leanlm.eval.results import document  # noqa: E402
from leanlm.evolve import generator, lineage  # noqa: E402
from leanlm.evolve.measure import passk_by_skill, shifted_set  # noqa: E402
from leanlm.fileio import atomic_write_json  # noqa: E402
from leanlm.report.tables import render_table  # noqa: E402

KEYS = ("headline", "headline_strict", "shifted_headline", "shifted_headline_strict", "refusal_heldout",
        "over_refusal", "ppl", "ppl2", "kl")


def _f(v, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:.1%}" if pct else f"{v:.3f}"


def _ci(m: dict, key: str) -> str:
    ci = m.get(key)
    return f"{ci['diff']:+.3f} [{ci['lo']:+.3f}, {ci['hi']:+.3f}]" if ci else "-"


def rows_of(recs: list[dict]) -> list[dict]:
    out = []
    if recs and recs[0].get("untuned"):
        out.append({"generation": "untuned", "accepted": None, **{k: recs[0]["untuned"].get(k) for k in KEYS}})
    for r in recs:
        m = r["metrics"]
        out.append({"generation": r["generation"], "accepted": r["accepted"], "wall_s": r.get("wall_s"),
                    **{k: m.get(k) for k in KEYS}, "refusal_ci": m.get("refusal_ci"),
                    "over_refusal_ci": m.get("over_refusal_ci"), "decisions": r.get("decisions")})
    return out


def passk(run: Path, recs: list[dict], n_problems: int) -> dict:
    from leanlm.models import load

    cfg = lineage.load_config(run)
    parts = {"heldout": generator.heldout_set(cfg.headline_skills, n_problems),
             "shifted": shifted_set(cfg.shifted_skills, n_problems)}
    models = {"untuned": cfg.spec, "gen 0": lineage.model_path(run, recs[0])}
    last = lineage.latest_accepted(recs)
    if last["generation"] > 0:
        models[f"gen {last['generation']}"] = lineage.model_path(run, last)
    out = {}
    for name, path in models.items():
        model, tok = load(path, dtype=cfg.dtype)
        res = {}
        for part, ps in parts.items():
            res[part] = passk_by_skill(model, tok, ps, 8, (1, 8), cfg.temperature, cfg.seed, cfg.gen_batch,
                                       cfg.max_new_tokens, progress=cfg.progress)
        out[name] = res
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--passk", type=int, default=0, help="held-out problems per skill for pass@1/8 (0 = skip)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    recs = lineage.records(args.run)
    rows = rows_of(recs)
    render_table(f"issue-19 run {args.run.name}",
                 ["gen", "acc.", "add:2+3 lenient", "strict", "shifted lenient", "shifted strict", "refusal",
                  "refusal change [95% CI]", "over-refusal", "change [95% CI]", "ppl pydoc", "ppl 2nd", "KL"],
                 [[str(r["generation"]), {None: "-", True: "yes", False: "no"}[r["accepted"]],
                   _f(r["headline"], True), _f(r["headline_strict"], True), _f(r["shifted_headline"], True),
                   _f(r["shifted_headline_strict"], True), _f(r["refusal_heldout"], True), _ci(r, "refusal_ci"),
                   _f(r["over_refusal"], True), _ci(r, "over_refusal_ci"), _f(r["ppl"]), _f(r["ppl2"]), _f(r["kl"])]
                  for r in rows])
    results = {"rows": rows, "safety_tune": recs[0].get("safety_tune") if recs else None}
    if args.passk:
        results["passk"] = pk = passk(args.run, recs, args.passk)
        render_table("pass@k (8 samples, T=0.8)", ["model", "part", "scoring", "skill", "pass@1", "pass@8"],
                     [[m, part, sc, s, _f(v["pass@1"], True), _f(v["pass@8"], True)]
                      for m, parts in pk.items() for part, scs in parts.items() for sc, sk in scs.items()
                      for s, v in sk.items()])
    if args.json:
        cfg = lineage.load_config(args.run)
        atomic_write_json(args.json, document("evolve_safe", {"spec": cfg.spec}, to_dict(cfg), results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
