"""Low-rank sweep: perplexity against bytes for plain SVD, whitened SVD and the combined recipe, each with
and without recovery, beside the original model, AWQ W4, and the same recovery on the uncompressed model
(the control that shows how much of any "recovery" is adaptation to the corpus).

    .venv/bin/python benchmarks/lowrank.py [--quick] [--spec smollm2-135m] [--fractions 0.1 0.2 0.3]
                                           [--max-tokens 8192] [--steps 60] [--json OUT] [--resume]

Every row is compressed, written to disk, loaded back through ``leanlm.load`` and scored with the eval
protocol's perplexity (``--max-tokens`` of the corpus's eval half); bytes are the artefact's files on disk.
``--remove`` fractions count the parameters of the decoder linears (q,k,v,o,gate,up,down); in the
``combined-F`` rows they count the embedding's (decomposed by whitened SVD before AWQ W4 and lossless
coding; the ``combined`` row is the default recipe, whose embedding is int8 in groups of 32). Rows are saved
to the JSON as they finish; ``--resume`` skips rows already there (same protocol). A PNG plot is written
beside the JSON. ``--quick``: 20% only, 4096 tokens.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from leanlm import load
from leanlm.compress.calib import calibration_ids
from leanlm.compress.lowrank.config import Execution, LowRankConfig, Method
from leanlm.compress.lowrank.decompose import decompose_model
from leanlm.compress.lowrank.embedding import EmbedMethod
from leanlm.compress.lowrank.store import save_lowrank
from leanlm.compress.lowrank.targets import target_names
from leanlm.compress.lowrank.whitening import collect_cholesky
from leanlm.compress.recipes import CombinedConfig, Step, run_combined, save_combined
from leanlm.compress.recover import Finish, RecoveryConfig, recover
from leanlm.config import to_dict
from leanlm.eval import EvalConfig
from leanlm.eval.memory import memory_bytes
from leanlm.eval.results import document
from leanlm.eval.run import corpus_perplexity
from leanlm.eval.speed import measure_speed
from leanlm.fileio import atomic_write_json
from leanlm.models import model_dir

HERE = Path(__file__).resolve().parent
log = logging.getLogger("lowrank-bench")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and f.suffix == ".safetensors")


class Sweep:
    def __init__(self, args):
        self.args, self.rows = args, {}
        self.cfg = EvalConfig(tasks=(), speed=False, max_tokens=args.max_tokens, progress=False)
        self.work = Path(tempfile.mkdtemp(prefix="leanlm-lowrank-bench-"))
        if args.resume and Path(args.json).is_file():
            old = json.loads(Path(args.json).read_text())
            if old["protocol"] == self.protocol():
                self.rows = {r["name"]: r for r in old["results"]["rows"]}

    def protocol(self) -> dict:
        a = self.args
        return {"eval": to_dict(self.cfg), "spec": a.spec, "recovery_steps": a.steps, "calib_n": a.calib_n}

    def done(self, name: str) -> bool:
        return name in self.rows or name in self.args.skip

    def record(self, name: str, path: Path | None, extra: dict) -> dict:
        t0 = time.perf_counter()
        model, tok = load(str(path) if path else self.args.spec, dtype="bf16")
        with torch.inference_mode():
            ppl = corpus_perplexity(model, tok, self.cfg)["perplexity"]
        src = path or model_dir(self.args.spec)
        bytes_ = dir_bytes(src) if src else 2 * sum(p.numel() for p in model.parameters())  # tiny: bf16 size
        row = {"name": name, "perplexity": ppl, "bytes": bytes_, "memory_bytes": memory_bytes(model),
               "eval_seconds": round(time.perf_counter() - t0, 1), **extra}
        self.rows[name] = row
        log.info("%-28s ppl %9.3f  bytes %12d", name, ppl, bytes_)
        self.save()
        return row

    def save(self) -> None:
        doc = document("lowrank-sweep", {"spec": self.args.spec}, self.protocol(),
                       {"rows": list(self.rows.values()), "goals": goals(self.rows)})
        atomic_write_json(self.args.json, doc)


def goals(rows: dict) -> dict:
    g = {}
    base = rows.get("original", {}).get("perplexity")
    svd, wh = rows.get("svd-20"), rows.get("whitened-20")
    if base and svd and wh:
        g["whitened_increase_over_svd_increase"] = (wh["perplexity"] - base) / (svd["perplexity"] - base)
    awq, comb, rec = rows.get("awq-w4"), rows.get("combined"), rows.get("combined+recovery")
    if awq and comb:
        g["combined_bytes_over_awq"] = comb["bytes"] / awq["bytes"]
        g["combined_ppl_over_awq"] = comb["perplexity"] / awq["perplexity"]
    if base and comb and rec:
        g["recovery_removed_fraction_of_combined_increase"] = (comb["perplexity"] - rec["perplexity"]) / (comb["perplexity"] - base)
    ctrl = rows.get("original+recovery")
    if base and ctrl:
        g["control_recovery_on_original_ppl_change"] = ctrl["perplexity"] - base
    return g


def lowrank_rows(s: Sweep, base, tok, chols, calib):
    a = s.args
    rec_cfg = RecoveryConfig(steps=a.steps, batch_size=a.batch, seq_len=a.seq_len, lr=a.lr, warmup=min(5, a.steps))
    for frac in a.fractions:
        for method in (Method.SVD, Method.WHITENED):
            name = f"{method.value}-{round(frac * 100)}"
            if s.done(name) and s.done(name + "+recovery"):
                continue
            model = copy.deepcopy(base)
            cfg = LowRankConfig(method=method, remove=frac, n_calib=a.calib_n)
            t0 = time.perf_counter()
            rep = decompose_model(model, cfg, calib, chols=chols)
            info = {"method": method.value, "remove": frac, **rep.summary(), "compress_seconds": round(time.perf_counter() - t0, 1)}
            path = s.work / name
            save_lowrank(model, tok, path, {"config": to_dict(cfg)}, overwrite=True)
            if not s.done(name):
                s.record(name, path, info)
            if not s.done(name + "+recovery"):
                r = recover(model, tok, rec_cfg)
                path = s.work / (name + "-recovered")
                save_lowrank(model, tok, path, {"config": to_dict(cfg)}, overwrite=True)
                s.record(name + "+recovery", path, {**info, "recovery": {k: v for k, v in r.items()}})
            del model


def combined_rows(s: Sweep, base_bf16, tok, sweep: bool = False):
    """``combined`` (+recovery): the default recipe (``--embed-method``). ``sweep``: ``combined-F``
    (+recovery) for each fraction, the embedding decomposed by whitened SVD with F of its parameters removed."""
    a = s.args
    rec = RecoveryConfig(steps=a.steps, batch_size=a.batch, seq_len=a.seq_len, lr=a.lr, warmup=min(5, a.steps),
                         finish=Finish.TRAINABLE)
    with_rec = (Step.EMBED, Step.RECOVER, Step.AWQ, Step.LOSSLESS)
    variants = {}
    for name, em, remove in ([("combined", EmbedMethod(a.embed_method), a.embed_remove)] if not sweep else
                             [(f"combined-{round(f * 100)}", EmbedMethod.WHITENED_SVD, f) for f in a.fractions]):
        variants[name] = CombinedConfig(embed_method=em, embed_remove=remove)
        variants[name + "+recovery"] = CombinedConfig(steps=with_rec, embed_method=em, embed_remove=remove, recovery=rec)
    for name, cfg in variants.items():
        if s.done(name):
            continue
        model = copy.deepcopy(base_bf16)
        embed_t, report = run_combined(model, tok, cfg)
        path = s.work / name
        doc = save_combined(model, tok, embed_t, cfg, path, report, overwrite=True)
        s.record(name, path, {"config": to_dict(cfg), "report": report, "staged_bytes": doc["staged_bytes"]})


def awq_row(s: Sweep, base_bf16, tok):
    if s.done("awq-w4"):
        return
    from leanlm.compress.quant.api import QuantConfig, calibration_for, quantize_model, save_quantized
    from leanlm.compress.quant.config import Method as QMethod

    model = copy.deepcopy(base_bf16)
    q = QuantConfig(method=QMethod.AWQ_W4)
    with torch.no_grad():
        quantize_model(model, q, calibration_for(tok, q))
    path = s.work / "awq-w4"
    save_quantized(model, tok, path, q, overwrite=True)
    s.record("awq-w4", path, {"config": to_dict(q)})


def speed_rows(s: Sweep):
    """Factored (x @ B then @ A on int8 codes) against rebuilt-dense execution of a 20%-removed artefact.

    Plain SVD builds it (no calibration needed); with uniform allocation its ranks, hence its memory and
    speed, are those of the whitened artefact too."""
    from leanlm.compress.lowrank.api import load_model

    if s.done("speed"):
        return
    path = s.work / "speed-artefact"
    model, tok = load(s.args.spec, dtype="fp32")
    decompose_model(model, LowRankConfig(method=Method.SVD, remove=0.2))
    save_lowrank(model, tok, path, {}, overwrite=True)
    del model
    out = {}
    for ex in ("original", Execution.FACTORED, Execution.DENSE):
        model, _ = load(s.args.spec, dtype="bf16") if ex == "original" else load_model(path, torch.bfloat16, "cpu", ex)
        sp = measure_speed(model, repeats=s.args.speed_repeats)
        out[str(getattr(ex, "value", ex))] = {"memory_bytes": memory_bytes(model), "prefill_tok_s": sp.prefill_tok_s,
                                             "decode_tok_s_b1": sp.decode_tok_s_b1, "decode_tok_s_b8": sp.decode_tok_s_b8}
    s.rows["speed"] = {"name": "speed", "artifact": "svd-20 (uniform ranks = whitened-20 ranks)",
                       "note": f"measured under load, {torch.get_num_threads()} thread(s)", **out}
    s.save()


def plot(rows: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = {"svd": "plain SVD", "whitened": "whitened SVD", "combined": "combined, embedding decomposed"}
    for key, label in series.items():
        for suffix, style in (("", "o-"), ("+recovery", "s--")):
            pts = sorted((r["bytes"], r["perplexity"]) for n, r in rows.items()
                         if n.startswith(key + "-") and n.endswith(suffix) and (suffix or "+" not in n))
            if pts:
                ax.plot(*zip(*pts), style, label=label + (" + recovery" if suffix else ""))
    for n, marker in (("original", "k*"), ("awq-w4", "r^"), ("combined", "gD"), ("combined+recovery", "gd"),
                      ("original+recovery", "kx")):
        if n in rows:
            ax.plot(rows[n]["bytes"], rows[n]["perplexity"], marker, markersize=9, label=n)
    ax.set_xlabel("bytes on disk")
    ax.set_ylabel("perplexity (eval half, lower is better)")
    ax.set_yscale("log")
    ppl = [r["perplexity"] for r in rows.values() if "perplexity" in r]
    sane = [v for v in ppl if v < 1000]
    if sane and len(sane) < len(ppl):   # collapsed rows (plain SVD here) would flatten everything else
        ax.set_ylim(min(sane) * 0.8, max(sane) * 1.5)
        ax.text(0.02, 0.97, f"off the chart: {len(ppl) - len(sane)} rows with ppl > 1000 (collapsed)",
                transform=ax.transAxes, fontsize=8, va="top")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def show(rows: dict) -> None:
    from rich.table import Table

    from leanlm.report.tables import console, fmt_bytes

    t = Table(title="low-rank sweep")
    for c in ("row", "perplexity", "bytes", "memory"):
        t.add_column(c, justify="right" if c != "row" else "left")
    for n, r in rows.items():
        if "perplexity" in r:
            t.add_row(n, f"{r['perplexity']:.3f}", fmt_bytes(r["bytes"]), fmt_bytes(r["memory_bytes"]))
    console.print(t)


def merge(files: list[str], out: Path) -> int:
    """Rows of several partial runs (e.g. run in parallel with --only) in one document and plot."""
    files = [f for f in files if Path(f).is_file() or log.warning("%s not found; merged without it", f)]
    docs = [json.loads(Path(f).read_text()) for f in files]
    rows = {r["name"]: r for d in docs for r in d["results"]["rows"]}
    protocols = {f: d["protocol"] for f, d in zip(files, docs)}
    doc = document("lowrank-sweep", docs[0]["model"], {"merged_from": protocols},
                   {"rows": list(rows.values()), "goals": goals(rows)})
    atomic_write_json(out, doc)
    show(rows)
    plot(rows, out.with_suffix(".png"))
    print(json.dumps(goals(rows), indent=2))  # noqa: T201 - a script
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--spec", default="smollm2-135m")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    p.add_argument("--max-tokens", type=int, default=8192)
    p.add_argument("--steps", type=int, default=60, help="recovery steps")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--calib-n", type=int, default=64)
    p.add_argument("--embed-method", default="int8-g32")
    p.add_argument("--embed-remove", type=float, default=0.1)
    p.add_argument("--speed-repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    p.add_argument("--only", nargs="+", default=["original", "lowrank", "awq", "combined", "combined-sweep", "control",
                                                 "speed"])
    p.add_argument("--json", default=str(HERE / "results" / "lowrank.json"))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--skip", nargs="+", default=[], metavar="ROW", help="rows not to run (e.g. run elsewhere)")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="only merge the rows of these result files into --json")
    a = p.parse_args(argv)
    if a.merge:
        return merge(a.merge, Path(a.json))
    if a.quick:
        a.fractions, a.max_tokens = [0.2], min(a.max_tokens, 4096)
    if a.threads:
        torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("torchao", "torch.utils._pytree", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    s = Sweep(a)
    try:
        if "original" in a.only and not s.done("original"):
            s.record("original", None, {})
        if "lowrank" in a.only:
            base, tok = load(a.spec, dtype="fp32")
            calib = calibration_ids(tok, a.calib_n, 256, 0)
            t0 = time.perf_counter()
            chols = collect_cholesky(base, calib, target_names(base), 8, LowRankConfig().damping)
            log.info("covariances + Cholesky in %.0fs", time.perf_counter() - t0)
            lowrank_rows(s, base, tok, chols, calib)
            del base, chols
        base16, tok = load(a.spec, dtype="bf16")
        if "awq" in a.only:
            awq_row(s, base16, tok)
        if "combined" in a.only:
            combined_rows(s, base16, tok)
        if "combined-sweep" in a.only:
            combined_rows(s, base16, tok, sweep=True)
        if "control" in a.only and not s.done("original+recovery"):
            model = copy.deepcopy(base16).float()
            r = recover(model, tok, RecoveryConfig(steps=a.steps, batch_size=a.batch, seq_len=a.seq_len, lr=a.lr,
                                                   warmup=min(5, a.steps)))
            path = s.work / "control"
            model.to(torch.bfloat16).save_pretrained(path)
            tok.save_pretrained(path)
            s.record("original+recovery", path, {"recovery": r})
        if "speed" in a.only:
            speed_rows(s)
    finally:
        shutil.rmtree(s.work, ignore_errors=True)
    show(s.rows)
    plot(s.rows, Path(a.json).with_suffix(".png"))
    print(json.dumps(goals(s.rows), indent=2))  # noqa: T201 - a script
    return 0


if __name__ == "__main__":
    sys.exit(main())
