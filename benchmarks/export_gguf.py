"""GGUF export: leanlm's quantiser against llama-quantize (with an imatrix from the same text), in llama.cpp.

    python benchmarks/export_gguf.py [--quick] [--models smollm2-135m gemma3-270m] [--json OUT]

For each model: an F32 GGUF of the source (our writer), llama-imatrix on the calibration text, then per
type leanlm's file (``--type T --calib FILE``, calibrated on the same first windows of the same file) and
llama-quantize's (``--imatrix``), each scored by llama.cpp's own ``llama-perplexity`` (context 256) on the
eval half of pydoc and on GPL-3 (never calibrated on), with KL divergence and top-1 agreement against the
F32 source's logits (and, for ``--engine-types``, against llama.cpp running the file's own dequantised
weights in float: what the engine computes vs what the file means); decode speed by ``llama-bench`` (1 thread, the two files alternated, median of rounds).
leanlm's files here do *not* copy source blocks (``reuse_source=False``): rounding against rounding. The
"never worse than the source" row re-exports SmolLM2 at Q4_1, its own grid, with block reuse on.
``goals`` in the JSON states the issue's lines per model: Q8_0 top-1 >= 98% and KL <= 0.01 against the
F32 source, and per race type whether leanlm's file is no larger (+1%) with lower perplexity on each
corpus. Resumable: a rerun with the same chunks and calibration keeps the types its JSON already has
(the F32 file, imatrix and reference logits stay in ``--work``). Needs ``make llama-cpp``. Writes ``benchmarks/results/export/gguf.json`` (``--quick``: ``gguf_quick.json``).
"""
from __future__ import annotations

import argparse
import dataclasses
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
from leanlm.export.gguf import GGUFExportConfig, calibrate, dequantise_gguf, export_gguf  # noqa: E402
from leanlm.export.gguf_source import load_float_model  # noqa: E402
from leanlm.fileio import atomic_write_json  # noqa: E402
from leanlm.report.tables import render_table  # noqa: E402

log = logging.getLogger("export_gguf")
RACE_TYPES = ("Q4_0", "Q4_K_M", "Q3_K_M", "Q2_K")
AGREE_TYPES = ("Q4_1", "Q5_0", "Q5_1", "Q6_K")      # scored for agreement with the F32 source too


def texts(work: Path) -> dict[str, Path]:
    out = {}
    for name, text in (("pydoc", split_corpus(load_corpus("pydoc"), "eval")), (OOD_CORPUS, load_corpus(OOD_CORPUS)),
                       ("calib", load_corpus("mix"))):
        out[name] = work / f"{name}.txt"
        out[name].write_text(text, encoding="utf-8")
    return out


def setup(args, corpora: bool = True) -> tuple[Path, dict[str, Path]] | None:
    """Logging, the llama.cpp tools check, and ``args.work`` with the corpus files written into it
    (``corpora``); None (after saying why) when the tools are missing."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not lc.available():
        print(f"llama.cpp tools missing ({lc.tools()}): run `make llama-cpp`", file=sys.stderr)
        return None
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    return work, texts(work) if corpora else {}


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


def engine_agreement(ours: Path, mdir: Path, files: dict[str, Path], chunks: dict[str, int]) -> dict:
    """llama.cpp running ``ours`` against llama.cpp running its dequantised weights in float32: what the
    engine computes from the file vs the model the file means (activation quantisation in the kernels)."""
    ref = mdir / f"{ours.stem}-dequantised-f32.gguf"
    dequantise_gguf(ours, ref)
    bases = {c: mdir / f"{ours.stem}-{c}.kld" for c in ("pydoc", OOD_CORPUS)}
    ref_ppl = {}
    for corpus, base in bases.items():
        ref_ppl[corpus] = lc.perplexity(ref, files[corpus], ctx=256, chunks=chunks[corpus], kl_save=base)["ppl"]
    res = score(ours, files, bases, chunks)
    res["dequantised_f32_ppl"] = ref_ppl
    ref.unlink()
    for b in bases.values():
        b.unlink()
    return res


def _resumable(out: Path, args) -> dict:
    """The models already measured in ``out`` with the same chunks and calibration (a rerun keeps them)."""
    if not out.is_file():
        return {}
    old = json.loads(out.read_text())
    absent = {"keep_grid": True, "rtn_for": ""}     # what a JSON from before these options measured
    same = all(old.get("config", {}).get(k, absent.get(k)) == getattr(args, k)
               for k in ("chunks", "calib_windows", "method", "keep_grid", "rtn_for"))
    return old.get("models", {}) if same else {}


def prepare(spec: str, mdir: Path, files: dict[str, Path], args, loaded: tuple, prior: dict):
    """The F32 GGUF of the source, its reference logits per corpus (for KL) and llama-imatrix on the
    calibration text, in ``mdir``; kept from an earlier run when ``prior`` says it measured them.
    Returns (calibration config, F32 file, imatrix file, KL base files, the model's doc so far)."""
    chunks = {"pydoc": args.chunks, OOD_CORPUS: args.chunks}
    base_cfg = GGUFExportConfig(qtype="F32", calib=str(files["calib"]), calib_windows=args.calib_windows,
                                reuse_source=False)
    f32, imat = mdir / "f32.gguf", mdir / "imatrix.gguf"
    bases = {c: mdir / f"base-{c}.kld" for c in ("pydoc", OOD_CORPUS)}
    doc = {"spec": spec, "types": {}}
    if prior and f32.is_file() and imat.is_file() and all(b.is_file() for b in bases.values()):
        doc = {**prior, "types": dict(prior.get("types", {}))}
        log.info("%s: resuming, %d types kept", spec, len(doc["types"]))
    else:
        export_gguf(spec, f32, base_cfg, force=True, loaded=loaded)
        for corpus in ("pydoc", OOD_CORPUS):
            r = lc.perplexity(f32, files[corpus], ctx=256, chunks=chunks[corpus], kl_save=bases[corpus])
            doc.setdefault("F32", {"bytes": f32.stat().st_size})[corpus] = {"ppl": r["ppl"]}
        doc["imatrix"] = lc.imatrix(f32, files["calib"], imat, ctx=512, chunks=args.calib_windows)
    return base_cfg, f32, imat, bases, doc


def run_model(spec: str, work: Path, files: dict[str, Path], args, prior: dict, save) -> dict:
    """Every ``--types`` row of one model; rows in ``prior`` (an earlier run's) are kept, not re-measured."""
    t0 = time.perf_counter()
    mdir = work / spec
    mdir.mkdir(parents=True, exist_ok=True)
    chunks = {"pydoc": args.chunks, OOD_CORPUS: args.chunks}
    loaded = load_float_model(spec)
    base_cfg, f32, imat, bases, doc = prepare(spec, mdir, files, args, loaded, prior)
    moments = None
    for qtype in args.types:
        if qtype in doc["types"]:
            continue
        moments = moments if moments is not None else calibrate(loaded[0], loaded[1], base_cfg)
        ours, theirs = mdir / f"leanlm-{qtype}.gguf", mdir / f"llama-{qtype}.gguf"
        cfg = GGUFExportConfig(qtype=qtype, calib=str(files["calib"]), calib_windows=args.calib_windows,
                               reuse_source=False, method=args.method, keep_grid=args.keep_grid,
                               rtn_for=tuple(c for c in args.rtn_for.split(",") if c))
        exp = export_gguf(spec, ours, cfg, force=True, moments=moments, loaded=loaded)
        lc.quantize(f32, theirs, qtype, imatrix_file=imat)
        row = {"leanlm": score(ours, files, bases, chunks), "llama_quantize": score(theirs, files, bases, chunks),
               "leanlm_fallbacks": len(exp["fallbacks"]), "leanlm_type_counts": exp["type_counts"],
               "leanlm_grid_tensors": exp["grid"],
               "leanlm_export_seconds": exp["seconds"]["total"]}
        if qtype in args.engine_types:
            row["engine_agreement"] = engine_agreement(ours, mdir, files, chunks)
        if qtype in args.speed_types and args.speed_rounds:
            row["decode"] = speed_pair(ours, theirs, args.speed_rounds)
        doc["types"][qtype] = row
        log.info("%s %s: %s", spec, qtype, json.dumps({k: row[k] for k in ("leanlm", "llama_quantize")}))
        ours.unlink()
        theirs.unlink()
        save(doc)
    if spec == "smollm2-135m" and "never_worse" not in doc and args.never_worse:
        moments = moments if moments is not None else calibrate(loaded[0], loaded[1], base_cfg)
        src = mdir / "leanlm-Q4_1-reuse.gguf"
        cfg = GGUFExportConfig(qtype="Q4_1", calib=str(files["calib"]), calib_windows=args.calib_windows,
                               reuse_source=True)
        exp = export_gguf(spec, src, cfg, force=True, moments=moments, loaded=loaded)
        copied = sum(r["how"].startswith("copied") for r in exp["tensors"].values())
        doc["never_worse"] = {"leanlm_q4_1_reuse": score(src, files, bases, chunks), "tensors_copied": copied,
                              "source_bytes": Path(exp["metadata_from"]).stat().st_size}
        from leanlm.models.specs import packaged_gguf_path
        doc["never_worse"]["source"] = score(packaged_gguf_path(spec), files, bases, chunks)
        src.unlink()
        if args.keep_grid:   # the same export without copying: the grid found from the values alone
            cfg = dataclasses.replace(cfg, reuse_source=False)
            exp = export_gguf(spec, src, cfg, force=True, moments=moments, loaded=loaded)
            doc["never_worse"]["leanlm_q4_1_grid"] = {**score(src, files, bases, chunks), "grid": exp["grid"],
                                                      **same_tensors(src, packaged_gguf_path(spec))}
            src.unlink()
    doc["seconds"] = round(doc.get("seconds", 0) + time.perf_counter() - t0, 1)
    save(doc)
    return doc


def same_tensors(a: Path, b: Path) -> dict:
    """How many of ``a``'s tensors have the same type and bytes in ``b``."""
    import gguf
    tb = {t.name: t for t in gguf.GGUFReader(str(b)).tensors}
    ta = gguf.GGUFReader(str(a)).tensors
    same = sum(t.name in tb and t.tensor_type == tb[t.name].tensor_type and
               bytes(t.data.tobytes()) == bytes(tb[t.name].data.tobytes()) for t in ta)
    return {"tensors_identical_to_source": same, "tensors": len(ta)}


def goals(doc: dict) -> dict:
    """The issue's pass/fail lines for one model: Q8_0 agreement, and the race per type (size +1%, ppl)."""
    out = {}
    q8 = doc["types"].get("Q8_0", {})
    for key, ref in (("leanlm", "the F32 source"), ("engine_agreement", "its own dequantised weights")):
        if key in q8:
            out[f"q8_0_agreement_vs_{'source' if key == 'leanlm' else 'dequantised'}"] = {
                "reference": ref, **{c: {"top1": q8[key][c]["top1"], "kld": q8[key][c]["kld"],
                                         "pass": q8[key][c]["top1"] >= 0.98 and q8[key][c]["kld"] <= 0.01}
                                     for c in ("pydoc", OOD_CORPUS)}}
    for qtype in RACE_TYPES:
        r = doc["types"].get(qtype)
        if r:
            a, b = r["leanlm"], r["llama_quantize"]
            out[f"race_{qtype}"] = {"size_ok": a["bytes"] <= 1.01 * b["bytes"],
                                    **{f"lower_ppl_{c}": a[c]["ppl"] < b[c]["ppl"] for c in ("pydoc", OOD_CORPUS)}}
    return out


def _cells(label: str, x: dict) -> list[str]:
    kl = " / ".join(f"{x[c]['kld']:.4f}" if "kld" in x[c] else "-" for c in ("pydoc", OOD_CORPUS))
    top = " / ".join(f"{100 * x[c]['top1']:.1f}%" if "top1" in x[c] else "-" for c in ("pydoc", OOD_CORPUS))
    return [label, f"{x['bytes'] / 1e6:.2f} MB", f"{x['pydoc']['ppl']:.3f}", f"{x[OOD_CORPUS]['ppl']:.3f}", kl, top]


def render(doc: dict) -> None:
    for spec, m in doc["models"].items():
        rows = [_cells("F32 (source)", m["F32"])]
        for qtype, r in m["types"].items():
            rows += [_cells(f"{qtype} {who}", r[who]) for who in ("leanlm", "llama_quantize")]
            if "engine_agreement" in r:
                rows.append(_cells(f"{qtype} leanlm vs its dequantised F32", r["engine_agreement"]))
            if "decode" in r:
                d = r["decode"]
                rows.append([f"{qtype} decode tok/s", "", f"leanlm {d['leanlm_tok_s']:.1f}",
                             f"llama {d['llama_tok_s']:.1f}", "", f"{d['ratio_median']:.3f}x"])
        if "never_worse" in m:
            rows += [_cells(f"Q4_1 {k}", m["never_worse"][k]) for k in ("source", "leanlm_q4_1_reuse")]
        for goal, v in m.get("goals", {}).items():
            print(f"{spec} {goal}: {json.dumps(v)}")
        render_table(f"{spec}: llama-perplexity, ctx 256, KL / top-1 vs the F32 source",
                     ["file", "size", "ppl pydoc", f"ppl {OOD_CORPUS}", f"KL pydoc / {OOD_CORPUS}",
                      f"top-1 pydoc / {OOD_CORPUS}"], rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="SmolLM2 only, Q8_0 and Q4_0, 16 chunks per corpus, no speed rounds")
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--types", nargs="+", default=["Q8_0", *RACE_TYPES, *AGREE_TYPES])
    ap.add_argument("--chunks", type=int, default=32, help="256-token chunks scored per corpus")
    ap.add_argument("--calib-windows", type=int, default=16, help="512-token calibration windows (both tools)")
    ap.add_argument("--method", default="rtn", choices=["rtn", "gptq"], help="leanlm's quantiser (see gguf.py)")
    ap.add_argument("--rtn-for", default="", metavar="CATS",
                    help="with --method gptq: tensor categories rounded without error feedback (attn_v,ffn_down)")
    ap.add_argument("--no-keep-grid", dest="keep_grid", action="store_false",
                    help="leanlm quantises every block, also those already on the type's grid (gguf_grid)")
    ap.add_argument("--speed-rounds", type=int, default=3)
    ap.add_argument("--engine-types", nargs="+", default=["Q8_0", "Q4_0"],
                    help="types also scored against their own dequantised weights run in float")
    ap.add_argument("--speed-types", nargs="+", default=["Q4_0"], help="types whose decode speed is raced")
    ap.add_argument("--no-never-worse", dest="never_worse", action="store_false",
                    help="skip SmolLM2's Q4_1 source-block reuse row")
    ap.add_argument("--work", default=str(ROOT / "out" / "export_gguf"))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.chunks, args.speed_rounds = args.models[:1], 16, 0
        args.types = [t for t in args.types if t in ("Q8_0", "Q4_0")]
    ready = setup(args)
    if ready is None:
        return 2
    work, files = ready
    doc = {"benchmark": "export_gguf", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "config": vars(args), "tools": {k: str(v) for k, v in lc.tools().items()},
           "note": "2-core CPU shared with other jobs; speeds are same-run alternating ratios", "models": {}}
    out = Path(args.json or ROOT / "benchmarks" / "results" / "export" /
               ("gguf_quick.json" if args.quick else "gguf.json"))
    prior = _resumable(out, args)
    for spec in args.models:
        def save(m, spec=spec):
            doc["models"][spec] = {**m, "goals": goals(m)}
            atomic_write_json(out, doc)      # partial results survive a stop; a rerun resumes
        run_model(spec, work, files, args, prior.get(spec, {}), save)
    render(doc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
