"""``--bpw``: leanlm's sensitivity-chosen type mix against llama-quantize's file types, size for size.

    python benchmarks/export_gguf_bpw.py [--models smollm2-135m gemma3-270m] [--json OUT]

For each model: llama-quantize (with an imatrix from the calibration text) writes each ``--llama-types``
file; leanlm then writes ``--bpw`` mixes at exactly each of those files' tensor bits per weight (so every
leanlm file is no larger than the llama.cpp file it sits beside) plus ``--extra-bpw`` points, including
the smallest mix the model allows (where the 4.5-bit floor of rows that are not multiples of 256 binds).
Every file is scored by llama.cpp's own ``llama-perplexity`` (context 256) on the pydoc eval half and on
GPL-3 (never calibrated on), with KL and top-1 agreement against the F32 source, as in
``export_gguf.py`` (whose F32 file, imatrix and reference logits in ``--work`` are reused). The mix's
candidates (every matrix in every type its rows allow) are quantised once per model and shared by all
budgets; a budget whose chosen mix equals a smaller budget's (every matrix at the end of its hull) is the
same file and is not scored again (``same_file_as``). leanlm's files do not copy source blocks
(``reuse_source=False``). Writes
``benchmarks/results/export/gguf_bpw.json`` and a size-perplexity plot beside it. Needs ``make llama-cpp``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import gguf  # noqa: E402

from export_gguf import prepare, score, setup  # noqa: E402
from leanlm.eval.corpus import OOD_CORPUS  # noqa: E402
from leanlm.export import llamacpp as lc  # noqa: E402
from leanlm.export.gguf import GGUFExportConfig, calibrate, export_gguf, mix_candidates, smallest_mix_bpw  # noqa: E402
from leanlm.export.gguf_source import load_float_model  # noqa: E402
from leanlm.fileio import atomic_write_json  # noqa: E402
from leanlm.report.tables import render_table  # noqa: E402

log = logging.getLogger("export_gguf_bpw")
LLAMA_TYPES = ("Q2_K", "Q3_K_M", "Q4_0", "Q4_K_M", "Q5_0", "Q5_K_M", "Q6_K")


def tensor_bpw(path: Path) -> tuple[float, int]:
    """(bits per weight over all tensors, number of weights) of a GGUF file."""
    r = gguf.GGUFReader(str(path))
    n = sum(int(t.n_elements) for t in r.tensors)
    return 8 * sum(int(t.n_bytes) for t in r.tensors) / n, n


def run_model(spec: str, work: Path, files: dict[str, Path], args, save) -> dict:
    t0 = time.perf_counter()
    mdir = work / spec
    mdir.mkdir(parents=True, exist_ok=True)
    loaded = load_float_model(spec)
    base_cfg, f32, imat, bases, doc = prepare(spec, mdir, files, args, loaded, {})
    chunks = {"pydoc": args.chunks, OOD_CORPUS: args.chunks}
    doc = {"spec": spec, "F32": doc.get("F32"), "llama_quantize": {}, "leanlm_mix": {}}
    for qtype in args.llama_types:
        theirs = mdir / f"llama-{qtype}.gguf"
        lc.quantize(f32, theirs, qtype, imatrix_file=imat)
        bpw, _ = tensor_bpw(theirs)
        doc["llama_quantize"][qtype] = {"bpw": round(bpw, 4), "bpw_exact": bpw, **score(theirs, files, bases, chunks)}
        theirs.unlink()
        log.info("%s llama %s: %s", spec, qtype, doc["llama_quantize"][qtype])
        save(doc)
    cfg = GGUFExportConfig(bpw=8.0, calib=str(files["calib"]), calib_windows=args.calib_windows,
                           reuse_source=False, fisher_windows=args.fisher_windows)
    tc = time.perf_counter()
    cands = mix_candidates(loaded[0], loaded[1], loaded[2], calibrate(loaded[0], loaded[1], cfg), cfg)
    doc["candidates_seconds"] = round(time.perf_counter() - tc, 1)
    floor = smallest_mix_bpw(loaded[2], cands)
    doc["smallest_mix_bpw"] = round(floor, 4)
    doc["narrow_matrices"] = sum(a.shape[-1] % 256 != 0 for n, a in loaded[2].items() if n in cands)
    doc["matrices"] = len(cands)
    # the exact bits per weight of llama.cpp's file: a rounded target can fall a few KB short of its size
    targets = {f"at {q}": v.get("bpw_exact", v["bpw"]) for q, v in doc["llama_quantize"].items()}
    targets.update({f"{b:g} bpw": b for b in args.extra_bpw if b >= floor})
    targets["smallest mix"] = floor + 1e-4
    scored: dict[str, tuple[str, dict]] = {}     # chosen types -> (first label, its scores)
    for label, bpw in sorted(targets.items(), key=lambda kv: kv[1]):
        ours = mdir / "leanlm-mix.gguf"
        exp = export_gguf(spec, ours, GGUFExportConfig(**{**cfg.__dict__, "bpw": bpw}), force=True,
                          loaded=loaded, candidates=cands)
        key = json.dumps({n: t["type"] for n, t in exp["tensors"].items()}, sort_keys=True)
        if key in scored:       # every matrix already at the end of its hull: the same file as a smaller budget
            first, res = scored[key]
            res = {**res, "same_file_as": first}
        else:
            res = score(ours, files, bases, chunks)
            scored[key] = (label, res)
        doc["leanlm_mix"][label] = {"bpw_target": round(bpw, 4), "bpw": exp["bits_per_weight"],
                                    "type_counts": exp["type_counts"], "est_loss_nats": exp["est_loss_nats"],
                                    **res}
        ours.unlink()
        log.info("%s leanlm %s: %s", spec, label, doc["leanlm_mix"][label])
        save(doc)
    doc["race"] = race(doc)
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    save(doc)
    return doc


def race(doc: dict) -> dict:
    """Per llama type: leanlm's mix at its size no larger (+1%) and lower perplexity on each corpus."""
    out = {}
    for q, b in doc["llama_quantize"].items():
        a = doc["leanlm_mix"].get(f"at {q}")
        if a:
            out[q] = {"size_ok": a["bytes"] <= 1.01 * b["bytes"],
                      **{f"lower_ppl_{c}": a[c]["ppl"] < b[c]["ppl"] for c in ("pydoc", OOD_CORPUS)}}
    return out


def plot(doc: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, corpus in zip(axes, ("pydoc", OOD_CORPUS)):
        for spec, m in doc["models"].items():
            lq = sorted(m["llama_quantize"].items(), key=lambda kv: kv[1]["bpw"])
            mx = sorted(m["leanlm_mix"].values(), key=lambda v: v["bpw"])
            line = ax.plot([v["bpw"] for _, v in lq], [v[corpus]["ppl"] for _, v in lq], "o--",
                           label=f"{spec} llama-quantize + imatrix")[0]
            ax.plot([v["bpw"] for v in mx], [v[corpus]["ppl"] for v in mx], "s-", color=line.get_color(),
                    label=f"{spec} leanlm --bpw")
            for q, v in lq:
                ax.annotate(q, (v["bpw"], v[corpus]["ppl"]), fontsize=7, textcoords="offset points",
                            xytext=(3, 4))
            if m.get("F32"):
                ax.axhline(m["F32"][corpus]["ppl"], color=line.get_color(), lw=0.6, ls=":")
            ax.axvline(m["smallest_mix_bpw"], color=line.get_color(), lw=0.6, ls="-.")
        ax.set_xlabel("bits per weight (all tensors)")
        ax.set_ylabel(f"llama-perplexity, {corpus}")
        ax.set_title(f"{corpus}{' (never calibrated on)' if corpus == OOD_CORPUS else ''}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("size vs perplexity: dotted = F32, dash-dot = smallest mix the rows allow", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def render(doc: dict) -> None:
    for spec, m in doc["models"].items():
        rows = []
        for q, v in m["llama_quantize"].items():
            rows.append([f"llama-quantize {q}", f"{v['bpw']:.3f}", f"{v['bytes'] / 1e6:.2f}",
                         f"{v['pydoc']['ppl']:.3f}", f"{v[OOD_CORPUS]['ppl']:.3f}",
                         f"{v['pydoc'].get('kld', float('nan')):.4f}", ""])
        for label, v in m["leanlm_mix"].items():
            mixd = ", ".join(f"{k}:{n}" for k, n in sorted(v["type_counts"].items()) if k != "F32")
            rows.append([f"leanlm --bpw ({label})", f"{v['bpw']:.3f}", f"{v['bytes'] / 1e6:.2f}",
                         f"{v['pydoc']['ppl']:.3f}", f"{v[OOD_CORPUS]['ppl']:.3f}",
                         f"{v['pydoc'].get('kld', float('nan')):.4f}", mixd])
        render_table(f"{spec}: --bpw mix vs llama.cpp types (llama-perplexity, ctx 256); smallest mix "
                     f"{m.get('smallest_mix_bpw', float('nan')):.3f} bpw",
                     ["file", "bpw", "MB", "ppl pydoc", f"ppl {OOD_CORPUS}", "KL pydoc", "mix"], rows)
        for q, r in m.get("race", {}).items():
            print(f"{spec} at {q}: {r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--llama-types", nargs="+", default=list(LLAMA_TYPES))
    ap.add_argument("--extra-bpw", nargs="*", type=float, default=[4.75, 5.0])
    ap.add_argument("--chunks", type=int, default=32, help="256-token chunks scored per corpus")
    ap.add_argument("--calib-windows", type=int, default=16, help="512-token calibration windows (both tools)")
    ap.add_argument("--fisher-windows", type=int, default=64, help="128-token windows for the sensitivity")
    ap.add_argument("--work", default=str(ROOT / "out" / "export_gguf"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    ready = setup(args)
    if ready is None:
        return 2
    work, files = ready
    out = Path(args.json or ROOT / "benchmarks" / "results" / "export" / "gguf_bpw.json")
    doc = {"benchmark": "export_gguf_bpw", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "config": vars(args), "models": {}}
    for spec in args.models:
        def save(m, spec=spec):
            doc["models"][spec] = m
            atomic_write_json(out, doc)
        run_model(spec, work, files, args, save)
        plot(doc, out.with_suffix(".png"))
    render(doc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
