"""Every quantisation method on SmolLM2-135M in one run, next to the bf16 original.

    .venv/bin/python benchmarks/quant.py [--quick] [--spec smollm2-135m] [--methods int8 w8a8 ...] [--json OUT]

Per model: weight bytes on disk (the saved checkpoint) and in memory (all weights, and the quantised
linears alone against the same linears in bf16), perplexity (the ``leanlm eval`` protocol: ``EvalConfig``
defaults), held-out task accuracy (``--n`` problems per task), KL divergence of next-token distributions
from the original (on the first ``--kl-tokens`` eval tokens), prefill and decode tok/s. Speeds are
measured at the end, interleaved over all models (round robin, median of rounds), so that load on a
shared machine hits every model alike. Writes benchmarks/results/quant.json (quant_quick.json with --quick).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from leanlm import load
from leanlm.compress.quant.api import Method, QuantConfig, calibration_for, calibration_summary, quantize_model
from leanlm.compress.quant.checkpoint import save_quantized
from leanlm.compress.quant.modules import _QuantLinear
from leanlm.config import to_dict
from leanlm.eval import EvalConfig, GenerationConfig, task_accuracy
from leanlm.eval.corpus import load_corpus, split_corpus
from leanlm.eval.memory import disk_bytes, memory_bytes
from leanlm.eval.perplexity import corpus_ids
from leanlm.eval.results import document
from leanlm.eval.run import corpus_perplexity
from leanlm.eval.speed import measure_speed
from leanlm.fileio import atomic_write_json
from leanlm.models import model_dir
from leanlm.models.arch import arch_for, decoder_layers
from leanlm.report.tables import render_table

HERE = Path(__file__).resolve().parent
log = logging.getLogger("quant-bench")
BASE = "bf16"


def linear_bytes(model: torch.nn.Module) -> int:
    """Bytes held by the block linears (the quantised ones, or the same linears in float)."""
    arch = arch_for(model)
    total = 0
    for block in decoder_layers(model, arch):
        for rel in arch.linears:
            m = block.get_submodule(rel)
            tensors = list(m.buffers()) if isinstance(m, _QuantLinear) else list(m.parameters())
            total += sum(t.numel() * t.element_size() for t in tensors if t is not None)
    return total


@torch.no_grad()
def next_token_logprobs(model, ids: torch.Tensor, window: int) -> torch.Tensor:
    """(tokens, vocab) float32 log-probabilities over ``ids`` cut into windows of ``window`` tokens."""
    rows = [F.log_softmax(model(input_ids=ids[s:s + window][None], use_cache=False).logits[0].float(), -1)
            for s in range(0, ids.numel(), window)]
    return torch.cat(rows)


def kl_from(ref_logp: torch.Tensor, logp: torch.Tensor) -> dict:
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)                       # KL(original || quantised)
    agree = (ref_logp.argmax(-1) == logp.argmax(-1)).float().mean()
    return {"kl_mean": float(kl.mean()), "kl_p99": float(kl.quantile(0.99)), "top1_agreement": float(agree)}


def quant_config(method: str, quick: bool) -> QuantConfig:
    if quick:
        return QuantConfig(method=Method(method), calib_n=12, calib_seq_len=256, alpha_grid=(0.4, 0.5, 0.6, 0.7),
                           alpha_eval_n=4, awq_grid=10, clip_grid=10, awq_tokens=2048)
    return QuantConfig(method=Method(method))


def measure_model(name: str, model, tok, cfg: EvalConfig, args, ref_logp, kl_ids) -> dict:
    t0 = time.perf_counter()
    row: dict = {"memory_bytes": memory_bytes(model), "linear_bytes": linear_bytes(model)}
    with torch.inference_mode():
        row["perplexity"] = corpus_perplexity(model, tok, cfg)
        logp = next_token_logprobs(model, kl_ids, cfg.context)
        row["kl"] = kl_from(ref_logp, logp) if ref_logp is not None else {"kl_mean": 0.0, "kl_p99": 0.0,
                                                                         "top1_agreement": 1.0}
        gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.gen_batch)
        tasks = task_accuracy(model, tok, cfg.tasks, args.n, gen, progress=False)
    row["tasks"] = {k: {"accuracy": v["accuracy"], "correct": v["correct"], "n": v["n"]} for k, v in tasks.items()}
    row["task_accuracy_mean"] = sum(v["accuracy"] for v in tasks.values()) / len(tasks)
    row["measure_seconds"] = round(time.perf_counter() - t0, 1)
    log.info("%s: ppl %.3f, KL %.4f, tasks %.3f", name, row["perplexity"]["perplexity"], row["kl"]["kl_mean"],
             row["task_accuracy_mean"])
    return row


def interleaved_speed(models: dict, rounds: int) -> dict[str, dict]:
    """Round-robin ``measure_speed`` (1 timed repeat each) over all models; medians per model."""
    samples: dict[str, list] = {k: [] for k in models}
    for r in range(rounds):
        for name, model in models.items():
            with torch.inference_mode():
                samples[name].append(measure_speed(model, repeats=1, warmup=1 if r == 0 else 0))
    out = {}
    for name, ss in samples.items():
        out[name] = {f: statistics.median(getattr(s, f) for s in ss)
                     for f in ("prefill_tok_s", "decode_tok_s_b1", "decode_tok_s_b8")}
        out[name].update(rounds=rounds, threads=ss[0].threads, prompt_len=ss[0].prompt_len,
                         decode_tokens=ss[0].decode_tokens)
    return out


def goals(rows: dict) -> dict:
    def ppl(k):
        return rows[k]["perplexity"]["perplexity"] if k in rows else None

    base, out = ppl(BASE), {}
    if ppl("int8"):
        out["int8_ppl_within_0.5pct"] = {"delta_pct": 100 * (ppl("int8") / base - 1),
                                         "met": ppl("int8") <= base * 1.005}
    for better, worse, key in (("smoothquant", "w8a8", "smoothquant_halves_w8a8_increase"),
                               ("awq-w4", "rtn-w4", "awq_halves_rtn_w4_increase")):
        if ppl(better) and ppl(worse):
            inc_b, inc_w = ppl(better) - base, ppl(worse) - base
            out[key] = {"increase": inc_b, "baseline_increase": inc_w, "ratio": inc_b / inc_w if inc_w else None,
                        "met": inc_b <= 0.5 * inc_w}
    for k, limit in (("int8", 0.55), ("w8a8", 0.55), ("smoothquant", 0.55), ("rtn-w4", 0.35), ("awq-w4", 0.35)):
        if k in rows:
            lin = rows[k]["linear_bytes"] / rows[BASE]["linear_bytes"]
            allw = rows[k]["memory_bytes"] / rows[BASE]["memory_bytes"]
            out[f"{k}_memory_at_most_{int(limit * 100)}pct"] = {
                "quantised_linears_ratio": lin, "all_weights_ratio": allw,
                "met_on_linears": lin <= limit, "met_on_all_weights": allw <= limit}
    return out


def render(rows: dict) -> None:
    base = rows[BASE]
    headers = ["model", "disk", "memory (% bf16)", "linears (% bf16)", "ppl", "Δppl", "KL", "top-1 agree",
               "tasks", "prefill tok/s", "decode b1", "decode b8", "calib s"]
    table = []
    for name, r in rows.items():
        s = r.get("speed", {})
        table.append([
            name, f"{r['disk_bytes'] / 2**20:.1f} MiB" if r.get("disk_bytes") else "-",
            f"{r['memory_bytes'] / 2**20:.1f} MiB ({100 * r['memory_bytes'] / base['memory_bytes']:.0f}%)",
            f"{100 * r['linear_bytes'] / base['linear_bytes']:.1f}%",
            f"{r['perplexity']['perplexity']:.3f}",
            f"{100 * (r['perplexity']['perplexity'] / base['perplexity']['perplexity'] - 1):+.2f}%",
            f"{r['kl']['kl_mean']:.4f}", f"{100 * r['kl']['top1_agreement']:.1f}%",
            f"{100 * r['task_accuracy_mean']:.1f}%",
            f"{s.get('prefill_tok_s', 0):.0f}", f"{s.get('decode_tok_s_b1', 0):.1f}", f"{s.get('decode_tok_s_b8', 0):.1f}",
            f"{r.get('calibration', {}).get('calibration_seconds', 0):.0f}",
        ])
    render_table("quantisation methods (same process; speeds interleaved)", headers, table)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer tokens, problems and calibration windows")
    p.add_argument("--spec", default="smollm2-135m")
    p.add_argument("--methods", nargs="+", default=[m.value for m in Method], choices=[m.value for m in Method])
    p.add_argument("--n", type=int, default=None, help="held-out problems per task (default 10; quick 4)")
    p.add_argument("--kl-tokens", type=int, default=None, help="eval tokens for the KL (default 2048; quick 512)")
    p.add_argument("--speed-rounds", type=int, default=None, help="interleaved speed rounds (default 3; quick 1)")
    p.add_argument("--json", default=None, help="output JSON (default benchmarks/results/quant[_quick].json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.n = args.n if args.n is not None else (4 if args.quick else 10)
    kl_tokens = args.kl_tokens or (512 if args.quick else 2048)
    rounds = args.speed_rounds or (1 if args.quick else 3)
    cfg = EvalConfig(progress=False, **({"max_tokens": 2048, "tasks": ("add:1", "add:2", "reverse:3")}
                                        if args.quick else {}))

    base, tok = load(args.spec, dtype="bf16")
    kl_ids = corpus_ids(tok, split_corpus(load_corpus(cfg.corpus), "eval"), kl_tokens)
    with torch.inference_mode():
        ref_logp = next_token_logprobs(base, kl_ids, cfg.context)
    rows = {BASE: {**measure_model(BASE, base, tok, cfg, args, None, kl_ids),
                   "disk_bytes": disk_bytes(model_dir(args.spec))}}
    models = {BASE: base}
    with tempfile.TemporaryDirectory(prefix="leanlm-quant-bench-") as tmp:
        for method in args.methods:
            qcfg = quant_config(method, args.quick)
            model, _ = load(args.spec, dtype="bf16")
            with torch.no_grad():
                quantize_model(model, qcfg, calibration_for(tok, qcfg))
            manifest = save_quantized(model, tok, Path(tmp) / method, qcfg, extra=calibration_summary(model))
            rows[method] = {**measure_model(method, model, tok, cfg, args, ref_logp, kl_ids),
                            "disk_bytes": manifest["files"]["model.safetensors"]["bytes"],
                            "config": to_dict(qcfg), "calibration": calibration_summary(model)}
            models[method] = model
    log.info("timing %d models, %d interleaved round(s)", len(models), rounds)
    for name, speed in interleaved_speed(models, rounds).items():
        rows[name]["speed"] = speed
    results = {"rows": rows, "goals": goals(rows),
               "notes": {"memory": "memory_bytes = all parameters and buffers (tied embedding counted once; "
                                   "embeddings and lm_head stay bf16); linear_bytes = the 210 block linears only",
                         "int4_padding": "group 128 along K; K=576 is padded to 640 for the kernel "
                                         "(the padded columns are counted in memory)",
                         "kl": f"KL(original || quantised) of next-token distributions on the first {kl_tokens} "
                               f"eval-split tokens, windows of {cfg.context}",
                         "tasks": f"{args.n} held-out problems per task"}}
    doc = document("quant", {"spec": args.spec, "dtype": "bf16"},
                   {**dataclasses.asdict(cfg), "n": args.n, "quick": args.quick}, results)
    out = Path(args.json) if args.json else HERE / "results" / ("quant_quick.json" if args.quick else "quant.json")
    atomic_write_json(out, doc)
    render(rows)
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
