"""Why leanlm's GGUF quantiser wins or loses against llama-quantize + imatrix: one type, several variants.

    python benchmarks/export_gguf_ablate.py [--model smollm2-135m] [--type Q4_0] [--windows 4 16 64]
                                            [--chunks 32] [--json OUT]

One F32 GGUF of the source (our writer) gives the reference logits; for each calibration size (512-token
windows of the same ``mix`` text, both tools), llama-imatrix + llama-quantize against leanlm's variants:

- ``gptq``: GPTQ error feedback, each 32-block's scale searched when the sweep reaches it;
- ``gptq-stale``: the earlier order (a 256-column batch's eight block scales searched at its start);
- ``gptq-llamaw``: GPTQ with llama.cpp's per-weight importance ``imatrix * sqrt(sigma2 + w^2)``;
- ``rtn``: importance-weighted scale search, no error feedback (diag(H) weights: llama-quantize's role;
  the export's default);
- ``rtn-llamaw``: the same with llama.cpp's weighting: the closest to llama-quantize's own method;
- ``gptq-damp0.1``: ten times GPTQ's usual dampening;
- ``gptq-rtn-v-down``: GPTQ, but ``attn_v`` and ``ffn_down`` rounded without error feedback;
- ``grid``: ``rtn`` with ``keep_grid`` (blocks already on the type's grid coded on it; every other variant
  runs with ``keep_grid=False``, as all of them did before that option existed);

each scored by ``llama-perplexity`` (context 256) on the pydoc eval half and GPL-3, with KL and top-1
against the F32 logits. The extra variants run at ``--detail-windows`` only; ``--no-imatrix-row`` adds
llama-quantize without an imatrix. Resumable: a rerun with the same model, type and chunks keeps the rows
its JSON already has (the F32 file and reference logits stay in ``--work``). Needs ``make llama-cpp``. Writes ``benchmarks/results/export/gguf_ablate_<type>.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from export_gguf import score, setup, texts  # noqa: E402

from leanlm.eval.corpus import OOD_CORPUS  # noqa: E402
from leanlm.export import llamacpp as lc  # noqa: E402
from leanlm.export.gguf import GGUFExportConfig, calibrate, export_gguf  # noqa: E402
from leanlm.export.gguf_source import load_float_model  # noqa: E402
from leanlm.fileio import atomic_write_json  # noqa: E402
from leanlm.report.tables import render_table  # noqa: E402

log = logging.getLogger("export_gguf_ablate")
VARIANTS = {
    "gptq": {"method": "gptq"},
    "gptq-stale": {"method": "gptq", "params_when_reached": False},
    "gptq-llamaw": {"method": "gptq", "llama_weighting": True},
    "rtn": {"method": "rtn"},
    "rtn-llamaw": {"method": "rtn", "llama_weighting": True},
    "gptq-damp0.1": {"method": "gptq", "damp": 0.1},
    "gptq-rtn-v-down": {"method": "gptq", "rtn_for": ("attn_v", "ffn_down")},
    "grid": {"keep_grid": True},     # the default rtn, with blocks already on the type's grid coded on it
}


def run(args) -> dict:
    work = Path(args.work)
    mdir = work / args.model
    mdir.mkdir(parents=True, exist_ok=True)
    files = texts(work)
    chunks = {"pydoc": args.chunks, OOD_CORPUS: args.chunks}
    loaded = load_float_model(args.model)
    out_json = Path(args.json or ROOT / "benchmarks" / "results" / "export" / f"gguf_ablate_{args.type.lower()}.json")
    doc = {"benchmark": "export_gguf_ablate", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "config": vars(args), "model": args.model, "type": args.type,
           "note": "2-core CPU shared with other jobs; llama-perplexity -t 2, context 256", "rows": []}
    f32 = mdir / "f32.gguf"
    bases = {c: mdir / f"base-{c}.kld" for c in ("pydoc", OOD_CORPUS)}
    old = json.loads(out_json.read_text()) if out_json.is_file() else {}
    resume = (old.get("model"), old.get("type"), old.get("config", {}).get("chunks")) == \
        (args.model, args.type, args.chunks) and f32.is_file() and all(b.is_file() for b in bases.values())
    if resume:                       # same model, type and chunks: keep the rows already measured
        doc["F32"], doc["rows"] = old["F32"], old["rows"]
        log.info("resuming %s: %d rows kept", out_json, len(doc["rows"]))
    else:
        export_gguf(args.model, f32, GGUFExportConfig(qtype="F32", reuse_source=False), force=True, loaded=loaded)
        for corpus in ("pydoc", OOD_CORPUS):
            r = lc.perplexity(f32, files[corpus], ctx=256, chunks=chunks[corpus], kl_save=bases[corpus])
            doc.setdefault("F32", {"bytes": f32.stat().st_size})[corpus] = {"ppl": r["ppl"]}
    done = {(r["who"], r["windows"]) for r in doc["rows"]}

    def add(who: str, windows: int | None, path: Path, extra: dict | None = None) -> None:
        row = {"who": who, "windows": windows, **score(path, files, bases, chunks), **(extra or {})}
        doc["rows"].append(row)
        atomic_write_json(out_json, doc)
        log.info("%s w=%s: pydoc %.3f %s %.3f", who, windows, row["pydoc"]["ppl"], OOD_CORPUS, row[OOD_CORPUS]["ppl"])
        path.unlink()

    theirs = mdir / "llama.gguf"
    if args.no_imatrix_row and ("llama-quantize (no imatrix)", None) not in done:
        lc.quantize(f32, theirs, args.type)
        add("llama-quantize (no imatrix)", None, theirs)
    for w in args.windows:
        if ("llama-quantize + imatrix", w) not in done:
            imat = mdir / f"imatrix-{w}.gguf"
            lc.imatrix(f32, files["calib"], imat, ctx=512, chunks=w)
            lc.quantize(f32, theirs, args.type, imatrix_file=imat)
            add("llama-quantize + imatrix", w, theirs)
        # rounding against rounding: no variant codes a block on a grid it finds in the values except "grid"
        base = GGUFExportConfig(qtype=args.type, calib=str(files["calib"]), calib_windows=w, reuse_source=False,
                                keep_grid=False)
        names = [n for n in (args.variants if w in args.detail_windows else ["gptq"])
                 if (f"leanlm {n}", w) not in done]
        moments = calibrate(loaded[0], loaded[1], base) if names else None
        for name in names:
            cfg = dataclasses.replace(base, **VARIANTS[name])
            ours = mdir / f"leanlm-{name}.gguf"
            exp = export_gguf(args.model, ours, cfg, force=True, moments=moments, loaded=loaded)
            add(f"leanlm {name}", w, ours, {"export_seconds": exp["seconds"]["total"],
                                            "type_counts": exp["type_counts"]})
    doc["seconds"] = round(time.perf_counter() - T0, 1)
    atomic_write_json(out_json, doc)
    doc["json"] = str(out_json)
    return doc


def layer_errors(args) -> dict:
    """Per tensor, the output error ``tr(D H D^T) / tr(W H W^T)`` of leanlm's file and llama-quantize's,
    with ``H`` from the calibration windows and from held-out windows (``--heldout``: the pydoc eval half, or
    a corpus such as gpl3): does the
    quantiser that loses in perplexity lose layer by layer, and does GPTQ's edge on the calibration
    text survive on other text?"""
    import gguf
    import numpy as np
    import torch

    from leanlm.eval.corpus import load_corpus, split_corpus
    from leanlm.export.gguf_calib import calibration_windows, input_moments
    from leanlm.export.gguf_quant import weighted_error
    from leanlm.export.gguf_source import gguf_arrays

    work = Path(args.work) / args.model
    work.mkdir(parents=True, exist_ok=True)
    files = texts(Path(args.work))
    w = args.windows[0]
    model, tok, tensors = loaded = load_float_model(args.model)
    f32 = work / "f32.gguf"
    if not f32.is_file():
        export_gguf(args.model, f32, GGUFExportConfig(qtype="F32", reuse_source=False), force=True, loaded=loaded)
    imat = work / f"imatrix-{w}.gguf"
    if not imat.is_file():
        lc.imatrix(f32, files["calib"], imat, ctx=512, chunks=w)
    cal = GGUFExportConfig(qtype=args.type, calib=str(files["calib"]), calib_windows=w, reuse_source=False)
    H_cal = calibrate(model, tok, cal)
    held = split_corpus(load_corpus("pydoc"), "eval") if args.heldout == "pydoc" else load_corpus(args.heldout)
    H_out = input_moments(model, calibration_windows(tok, held, 512, w))
    files_q = {}
    for name in args.variants:
        files_q[f"leanlm {name}"] = work / f"le-{name}.gguf"
        export_gguf(args.model, files_q[f"leanlm {name}"], dataclasses.replace(cal, **VARIANTS[name]),
                    force=True, moments=H_cal, loaded=loaded)
    files_q["llama-quantize + imatrix"] = work / "lq.gguf"
    lc.quantize(f32, files_q["llama-quantize + imatrix"], args.type, imatrix_file=imat)
    decoded = {who: gguf_arrays(gguf.GGUFReader(str(p))) for who, p in files_q.items()}
    rows = {}
    torch.set_num_threads(2)
    for tname, W in tensors.items():
        if tname not in H_cal or W.ndim != 2 or tname == "token_embd.weight":   # the head: Q8_0 in both
            continue
        Wt = torch.from_numpy(W)
        ref = {k: weighted_error(Wt, torch.zeros_like(Wt), H[tname]) for k, H in (("cal", H_cal), ("heldout", H_out))}
        rows[tname] = {who: {k: weighted_error(Wt, torch.from_numpy(np.ascontiguousarray(d[tname])), H[tname]) / ref[k]
                             for k, H in (("cal", H_cal), ("heldout", H_out))} for who, d in decoded.items()}
    for p in files_q.values():
        p.unlink()
    summary = {}
    for who in files_q:
        for k in ("cal", "heldout"):
            # llama-quantize recovers the source's Q4_1 grid exactly where its mix picks Q4_1 (error 0)
            ratios = [r[who][k] / r["llama-quantize + imatrix"][k] for r in rows.values()
                      if r["llama-quantize + imatrix"][k] > 0]
            summary.setdefault(who, {})[k] = {"median_ratio_vs_llama": float(np.median(ratios)),
                                              "tensors_better_than_llama": int(sum(x < 1 for x in ratios)),
                                              "tensors": len(ratios)}
    doc = {"benchmark": "export_gguf_layer_errors", "model": args.model, "type": args.type, "windows": w,
           "heldout": args.heldout,
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "summary": summary, "tensors": rows}
    out = Path(args.json or ROOT / "benchmarks" / "results" / "export" / f"gguf_layer_errors_{args.type.lower()}.json")
    atomic_write_json(out, doc)
    table = [[who, k, f"{v['median_ratio_vs_llama']:.3f}", f"{v['tensors_better_than_llama']}/{v['tensors']}"]
             for who, s in summary.items() for k, v in s.items()]
    render_table(f"{args.model} {args.type}: per-tensor output error vs llama-quantize's (windows {w})",
                 ["quantiser", "H from", "median error ratio", "tensors better"], table)
    print(f"wrote {out}")
    return doc


def render(doc: dict) -> None:
    rows = [["F32 (source)", "-", f"{doc['F32']['bytes'] / 1e6:.1f} MB", f"{doc['F32']['pydoc']['ppl']:.3f}",
             f"{doc['F32'][OOD_CORPUS]['ppl']:.3f}", "-", "-"]]
    for r in doc["rows"]:
        rows.append([r["who"], str(r["windows"] or "-"), f"{r['bytes'] / 1e6:.2f} MB", f"{r['pydoc']['ppl']:.3f}",
                     f"{r[OOD_CORPUS]['ppl']:.3f}", f"{r['pydoc']['kld']:.4f} / {r[OOD_CORPUS]['kld']:.4f}",
                     f"{100 * r['pydoc']['top1']:.1f} / {100 * r[OOD_CORPUS]['top1']:.1f}%"])
    render_table(f"{doc['model']} {doc['type']}: llama-perplexity ctx 256, {doc['config']['chunks']} chunks per corpus",
                 ["file", "calib windows", "size", "ppl pydoc", f"ppl {OOD_CORPUS}", "KL pydoc / gpl3",
                  "top-1 pydoc / gpl3"], rows)


T0 = time.perf_counter()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--type", default="Q4_0")
    ap.add_argument("--windows", nargs="+", type=int, default=[4, 16, 64], help="512-token calibration windows")
    ap.add_argument("--detail-windows", nargs="+", type=int, default=[16], help="windows where every variant runs")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--no-imatrix-row", action="store_true", help="also llama-quantize without an imatrix")
    ap.add_argument("--chunks", type=int, default=32, help="256-token chunks scored per corpus")
    ap.add_argument("--work", default=str(ROOT / "out" / "export_gguf_ablate"))
    ap.add_argument("--layer-errors", action="store_true",
                    help="instead: per-tensor output error of each variant vs llama-quantize's (first --windows)")
    ap.add_argument("--heldout", default="pydoc", help="--layer-errors: held-out text (pydoc's eval half, or a corpus)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if setup(args, corpora=False) is None:
        return 2
    if args.layer_errors:
        layer_errors(args)
        return 0
    doc = run(args)
    render(doc)
    print(f"wrote {doc['json']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
