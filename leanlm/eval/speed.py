"""Speed: prefill tokens/s and decode tokens/s at batch 1 and batch 8 (warm-up, repeats, medians).

Prefill: one forward pass over a ``prompt_len``-token prompt. Decode: after a prefill, ``decode_tokens``
single-token steps through the KV cache, greedy; tokens/s = batch * steps / time of the steps alone.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SpeedResult:
    prefill_tok_s: float
    decode_tok_s_b1: float
    decode_tok_s_b8: float
    prompt_len: int
    decode_tokens: int
    repeats: int
    threads: int


def _prompt(model, batch: int, length: int) -> torch.Tensor:
    vocab = model.get_input_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (batch, length), generator=g)


@torch.no_grad()
def time_prefill(model, batch: int, length: int) -> float:
    x = _prompt(model, batch, length)
    t0 = time.perf_counter()
    model(input_ids=x, use_cache=False)
    return time.perf_counter() - t0


@torch.no_grad()
def time_decode(model, batch: int, prompt_len: int, steps: int) -> float:
    x = _prompt(model, batch, prompt_len)
    out = model(input_ids=x, use_cache=True)
    cache, nxt = out.cache, out.logits[:, -1:].argmax(-1)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=nxt, cache=cache, use_cache=True)
        cache, nxt = out.cache, out.logits[:, -1:].argmax(-1)
    return time.perf_counter() - t0


def measure_speed(model, prompt_len: int = 128, decode_tokens: int = 32, repeats: int = 3,
                  warmup: int = 1) -> SpeedResult:
    def median_rate(fn, tokens: int) -> float:
        for _ in range(warmup):
            fn()
        return tokens / statistics.median(fn() for _ in range(repeats))

    return SpeedResult(
        prefill_tok_s=median_rate(lambda: time_prefill(model, 1, prompt_len), prompt_len),
        decode_tok_s_b1=median_rate(lambda: time_decode(model, 1, 8, decode_tokens), decode_tokens),
        decode_tok_s_b8=median_rate(lambda: time_decode(model, 8, 8, decode_tokens), 8 * decode_tokens),
        prompt_len=prompt_len, decode_tokens=decode_tokens, repeats=repeats, threads=torch.get_num_threads(),
    )
