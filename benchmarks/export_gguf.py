"""GGUF export: leanlm's quantiser against llama-quantize (with an imatrix from the same text), in llama.cpp.

    python benchmarks/export_gguf.py [--quick] [--models smollm2-135m gemma3-270m] [--json OUT]

For each model: an F32 GGUF of the source (our writer), llama-imatrix on the calibration text, then per
type leanlm's file (``--type T --calib FILE``, calibrated on the same first windows of the same file) and
llama-quantize's (``--imatrix``), each scored by llama.cpp's own ``llama-perplexity`` (context 256) on the
eval half of pydoc and on GPL-3 (never calibrated on), with KL divergence and top-1 agreement against the
F32 source's logits; decode speed by ``llama-bench`` (1 thread, the two files alternated, median of rounds).
leanlm's files here do *not* copy source blocks (``reuse_source=False``): rounding against rounding. The
"never worse than the source" row re-exports SmolLM2 at Q4_1, its own grid, with block reuse on.
Needs ``make llama-cpp``. Writes ``benchmarks/results/export/gguf.json`` (``--quick``: ``gguf_quick.json``).
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from leanlm.eval.corpus import OOD_CORPUS, load_corpus, split_corpus  # noqa: E402
from leanlm.export import llamacpp as lc  # noqa: E402
from leanlm.export.gguf import GGUFExportConfig, calibrate, export_gguf  # noqa: E402
from leanlm.export.gguf_source import load_float_model  # noqa: E402
from leanlm.fileio import atomic_write_json  # noqa: E402
from leanlm.report.tables import render_table  # noqa: E402

log = logging.getLogger("export_gguf")
RACE_TYPES = ("Q4_0", "Q4_K_M", "Q3_K_M", "Q2_K")


def texts(work: Path) -> dict[str, Path]:
    out = {}
    for name, text in (("pydoc", split_corpus(load_corpus("pydoc"), "eval")), (OOD_CORPUS, load_corpus(OOD_CORPUS)),
                       ("calib", load_corpus("mix"))):
        out[name] = work / f"{name}.txt"
        out[name].write_text(text, encoding="utf-8")
    return out


def score(path: Path, files: dict[str, Path], bases: dict[str, Path], chunks: dict[str, int]) -> dict:
    res = {"bytes": path.stat().st_size}
    for corpus in ("pydoc", OOD_CORPUS):
        r = lc.perplexity(path, files[corpus], ctx=256, chunks=chunks[corpus], kl_base=bases[corpus])
        res[corpus] = {k: r[k] for k in ("ppl", "kld", "top1") if k in r}
    return res


def speed_pair(a: Path, b: Path, rounds: int) -> dict:
    """Decode tok/s of two files, alternated ``rounds`` times (1 thread, 32 tokens, 2 reps each)."""
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(lc.bench(a, n_gen=32, threads=1, reps=2)["tok_s"])
        tb.append(lc.bench(b, n_gen=32, threads=1, reps=2)["tok_s"])
    ratios = [x / y for x, y in zip(ta, tb)]
    return {"leanlm_tok_s": statistics.median(ta), "llama_tok_s": statistics.median(tb),
            "ratio_median": statistics.median(ratios), "ratios": ratios}


def run_model(spec: str, work: Path, files: dict[str, Path], args) -> dict:
    t0 = time.perf_counter()
    mdir = work / spec
    mdir.mkdir(parents=True, exist_ok=True)
    chunks = {"pydoc": args.chunks, OOD_CORPUS: args.chunks}
    loaded = load_float_model(spec)
    base_cfg = GGUFExportConfig(qtype="F32", calib=str(files["calib"]), calib_windows=args.calib_windows,
                                reuse_source=False)
    f32 = mdir / "f32.gguf"
    export_gguf(spec, f32, base_cfg, force=True, loaded=loaded)
    bases, doc = {}, {"spec": spec, "types": {}}
    for corpus in ("pydoc", OOD_CORPUS):
        bases[corpus] = mdir / f"base-{corpus}.kld"
        r = lc.perplexity(f32, files[corpus], ctx=256, chunks=chunks[corpus], kl_save=bases[corpus])
        doc.setdefault("F32", {"bytes": f32.stat().st_size})[corpus] = {"ppl": r["ppl"]}
    imat = mdir / "imatrix.gguf"
    doc["imatrix"] = lc.imatrix(f32, files["calib"], imat, ctx=512, chunks=args.calib_windows)
    moments = calibrate(loaded[0], loaded[1], base_cfg)
    for qtype in args.types:
        ours, theirs = mdir / f"leanlm-{qtype}.gguf", mdir / f"llama-{qtype}.gguf"
        cfg = GGUFExportConfig(qtype=qtype, calib=str(files["calib"]), calib_windows=args.calib_windows,
                               reuse_source=False)
        exp = export_gguf(spec, ours, cfg, force=True, moments=moments, loaded=loaded)
        lc.quantize(f32, theirs, qtype, imatrix_file=imat)
        row = {"leanlm": score(ours, files, bases, chunks), "llama_quantize": score(theirs, files, bases, chunks),
               "leanlm_fallbacks": len(exp["fallbacks"]), "leanlm_type_counts": exp["type_counts"],
               "leanlm_export_seconds": exp["seconds"]["total"]}
        if args.speed_rounds:
            row["decode"] = speed_pair(ours, theirs, args.speed_rounds)
        doc["types"][qtype] = row
        log.info("%s %s: %s", spec, qtype, json.dumps({k: row[k] for k in ("leanlm", "llama_quantize")}))
        for p in (ours, theirs):
            if qtype not in ("Q8_0",):
                p.unlink()
    if spec == "smollm2-135m":
        src = mdir / "leanlm-Q4_1-reuse.gguf"
        cfg = GGUFExportConfig(qtype="Q4_1", calib=str(files["calib"]), calib_windows=args.calib_windows,
                               reuse_source=True)
        exp = export_gguf(spec, src, cfg, force=True, moments=moments, loaded=loaded)
        copied = sum(r["how"].startswith("copied") for r in exp["tensors"].values())
        doc["never_worse"] = {"leanlm_q4_1_reuse": score(src, files, bases, chunks), "tensors_copied": copied,
                              "source_bytes": Path(exp["metadata_from"]).stat().st_size}
        from leanlm.models.specs import packaged_gguf_path
        doc["never_worse"]["source"] = score(packaged_gguf_path(spec), files, bases, chunks)
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    f32.unlink()
    return doc


def render(doc: dict) -> None:
    for spec, m in doc["models"].items():
        rows = [["F32 (source)", f"{m['F32']['bytes'] / 1e6:.1f} MB", f"{m['F32']['pydoc']['ppl']:.3f}",
                 f"{m['F32'][OOD_CORPUS]['ppl']:.3f}", "-", "-"]]
        for qtype, r in m["types"].items():
            for who in ("leanlm", "llama_quantize"):
                x = r[who]
                rows.append([f"{qtype} {who}", f"{x['bytes'] / 1e6:.1f} MB", f"{x['pydoc']['ppl']:.3f}",
                             f"{x[OOD_CORPUS]['ppl']:.3f}", f"{x[OOD_CORPUS].get('kld', float('nan')):.4f}",
                             f"{100 * x[OOD_CORPUS].get('top1', float('nan')):.1f}%"])
            if "decode" in r:
                rows.append([f"{qtype} decode leanlm/llama", "", "", "", "", f"{r['decode']['ratio_median']:.3f}x"])
        if "never_worse" in m:
            for k in ("source", "leanlm_q4_1_reuse"):
                x = m["never_worse"][k]
                rows.append([f"Q4_1 {k}", f"{x['bytes'] / 1e6:.1f} MB", f"{x['pydoc']['ppl']:.3f}",
                             f"{x[OOD_CORPUS]['ppl']:.3f}", f"{x[OOD_CORPUS].get('kld', float('nan')):.4f}",
                             f"{100 * x[OOD_CORPUS].get('top1', float('nan')):.1f}%"])
        render_table(f"{spec}: llama-perplexity, ctx 256 (KL/top-1 vs F32 source on {OOD_CORPUS})",
                     ["file", "size", "ppl pydoc", f"ppl {OOD_CORPUS}", "KL", "top-1"], rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="SmolLM2 only, 16 chunks per corpus, no speed rounds")
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--types", nargs="+", default=list(RACE_TYPES) + ["Q8_0"])
    ap.add_argument("--chunks", type=int, default=48, help="256-token chunks scored per corpus")
    ap.add_argument("--calib-windows", type=int, default=16, help="512-token calibration windows (both tools)")
    ap.add_argument("--speed-rounds", type=int, default=3)
    ap.add_argument("--work", default=str(ROOT / "out" / "export_gguf"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.quick:
        args.models, args.chunks, args.speed_rounds = args.models[:1], 16, 0
    if not lc.available():
        print(f"llama.cpp tools missing ({lc.tools()}): run `make llama-cpp`", file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    files = texts(work)
    doc = {"benchmark": "export_gguf", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "config": vars(args), "tools": {k: str(v) for k, v in lc.tools().items()},
           "note": "2-core CPU shared with other jobs; speeds are same-run alternating ratios", "models": {}}
    out = Path(args.json or ROOT / "benchmarks" / "results" / "export" /
               ("gguf_quick.json" if args.quick else "gguf.json"))
    for spec in args.models:
        doc["models"][spec] = run_model(spec, work, files, args)
        atomic_write_json(out, doc)          # partial results survive a stop
    render(doc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
