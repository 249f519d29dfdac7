"""Two in-process probes behind ``leanlm serve``'s defaults (SmolLM2, torch backend, one process):

1. decode-step cost by batch size and dtype (batch 1 vs 8; fp32 with PyTorch's BLAS, fp32 with the
   skinny kernel - the server's default - and bf16), alternating, medians;
2. decode-step latency at batch 8 while another thread loads a second model (what a swap costs the
   requests in flight).

    .venv/bin/python benchmarks/serve_probe.py [--threads 1] [--steps 8] [--parts step swap] [--json OUT]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from leanlm.serve.backends.torch_backend import load_torch
from leanlm.serve.versions import _lower_priority

HERE = Path(__file__).resolve().parent
PROMPT = [{"role": "user", "content": "Write a short paragraph about the sea."}]


def _steps(backend, state, logits, n: int) -> tuple[list[float], torch.Tensor]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        logits = backend.step(state, logits.argmax(-1).tolist())
        times.append(time.perf_counter() - t)
    return times, logits


def step_cost(spec: str, dtype: str, steps: int, rounds: int, kernels: tuple[bool, ...] = (False,)) -> dict:
    """Median decode-step time at batch 1 and 8; with ``kernels`` (False, True) the same model alternates
    between PyTorch's BLAS and the skinny kernel every round (same-run ratios)."""
    from leanlm.serve.backends import skinny

    b = load_torch(spec, dtype=dtype, skinny=False)
    ids = b.text.chat(PROMPT)
    out = {(k, batch): [] for k in kernels for batch in (1, 8)}
    for _ in range(rounds):
        for k in kernels:
            if k:
                layers = skinny.patch(b.model)
            else:
                skinny.unpatch(b.model)
            for batch in (1, 8):
                state, logits = b.prefill([ids] * batch)
                _, logits = _steps(b, state, logits, 2)                 # warm
                out[k, batch].append(statistics.median(_steps(b, state, logits, steps)[0]))
    res = {}
    for k in kernels:
        ms = {batch: statistics.median(out[k, batch]) * 1e3 for batch in (1, 8)}
        res["skinny" if k else "blas"] = {
            "step_ms_b1": ms[1], "step_ms_b8": ms[8], "cost_b8_over_b1": ms[8] / ms[1],
            "throughput_b8_over_b1": 8 * ms[1] / ms[8], **({"skinny_layers": layers} if k else {})}
    if len(kernels) == 2:
        for batch in (1, 8):
            res[f"skinny_speedup_b{batch}"] = statistics.median(
                blas / kern for blas, kern in zip(out[False, batch], out[True, batch]))
    return res


def swap_cost(spec: str, other: str, steps: int, nice: int = 0) -> dict:
    """Batch-8 decode steps before, during and after a load in a second thread at nice value ``nice`` (the
    server's loader thread runs at ``ServeConfig.load_nice``)."""
    b = load_torch(spec, dtype="fp32")
    state, logits = b.prefill([b.text.chat(PROMPT)] * 8)
    before, logits = _steps(b, state, logits, steps)
    done, took = threading.Event(), {}

    def load():
        _lower_priority(nice)
        t = time.perf_counter()
        load_torch(other, dtype="fp32")
        took["s"] = time.perf_counter() - t
        done.set()

    threading.Thread(target=load).start()
    t0, during = time.perf_counter(), []
    while not done.is_set():
        d, logits = _steps(b, state, logits, 1)
        during += d
    window = time.perf_counter() - t0
    after, _ = _steps(b, state, logits, steps)
    base = statistics.median(before + after)
    return {"nice": nice, "step_ms_before_after": base * 1e3,
            "step_ms_during_load_median": statistics.median(during) * 1e3,
            "step_ms_during_load_mean": statistics.fmean(during) * 1e3,
            "added_s_sum_of_steps": sum(during) - len(during) * base,
            "steps_during_load": len(during), "load_s": took["s"],
            "added_s_per_inflight_request": window - len(during) * base}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="smollm2-135m")
    p.add_argument("--other", default=None, help="model loaded during the swap probe (default: the spec)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--parts", nargs="+", default=["step", "swap"], choices=["step", "swap"])
    p.add_argument("--json", default=str(HERE / "results" / "serve" / "probe.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    res = {}
    if "step" in args.parts:
        res["fp32"] = step_cost(args.spec, "fp32", args.steps, args.rounds, kernels=(False, True))
        res["bf16"] = step_cost(args.spec, "bf16", args.steps, args.rounds)
    if "swap" in args.parts:
        res.update({f"swap_nice{n}": swap_cost(args.spec, args.other or args.spec, args.steps, n) for n in (0, 10)})
    from leanlm.eval.results import document
    from leanlm.fileio import atomic_write_json
    from leanlm.report.tables import render_table

    def flat(prefix, r):
        for k, v in r.items():
            yield from flat(f"{prefix} {k}", v) if isinstance(v, dict) else [(f"{prefix} {k}", v)]

    rows = [[k, f"{v:.3g}"] for part, r in res.items() for k, v in flat(part, r)]
    render_table("serve probes (median step times, one process)", ["measure", "value"], rows)
    atomic_write_json(args.json, document("serve-probe", {"spec": args.spec}, vars(args), res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
