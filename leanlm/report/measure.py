"""Paired measurements of a model against its original: per-token passes, agreement, KL, same-run speed.

The token pass follows the perplexity protocol of ``leanlm.eval.perplexity`` exactly (same windows, same
scored positions, NLL from float32 log-softmax, summed in float64), and keeps per-position results so two
models can be compared token by token: its perplexity equals ``eval.perplexity.perplexity`` on the same ids.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..eval.perplexity import token_nll, windows
from ..eval.speed import time_decode, time_prefill


@dataclass(frozen=True)
class TokenPass:
    nll: torch.Tensor    # (N,) float64: NLL of each scored token
    top1: torch.Tensor   # (N,) int64: the model's most likely token at each scored position

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll.sum().item() / self.nll.numel())


def _batches(ids: torch.Tensor, context: int, stride: int, batch_size: int):
    """Groups of equal-length (start, end, first_scored) windows, batched as the perplexity protocol does."""
    wins = windows(ids.numel(), context, stride)
    for i in range(0, len(wins), batch_size):
        group = wins[i:i + batch_size]
        if len({e - s for s, e, _ in group}) == 1:
            yield group
        else:
            yield from ([w] for w in group)


def _scored_logits(model, ids: torch.Tensor, group) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each window: (logits (n, V) at the positions that predict scored tokens, targets (n,))."""
    device = next(model.parameters()).device
    x = torch.stack([ids[s:e] for s, e, _ in group]).to(device)
    logits = model(input_ids=x, use_cache=False).logits  # (B, T, V)
    return [(logits[row, first - s - 1:e - s - 1], x[row, first - s:])
            for row, (s, e, first) in enumerate(group)]


@torch.no_grad()
def token_pass(model, ids: torch.Tensor, context: int, stride: int, batch_size: int = 4,
               progress: bool = False) -> TokenPass:
    if ids.dim() != 1 or ids.numel() < 2:
        raise ValueError("token_pass needs a 1-D tensor of at least 2 token ids")
    nll, top1 = [], []
    for group in tqdm(list(_batches(ids, context, stride, batch_size)), desc="tokens", disable=not progress,
                      leave=False):
        for logits, targets in _scored_logits(model, ids, group):
            nll.append(token_nll(logits.unsqueeze(0), targets.unsqueeze(0))[0].double().cpu())
            top1.append(logits.argmax(-1).cpu())
    return TokenPass(torch.cat(nll), torch.cat(top1))


def top1_agreement(a: TokenPass, b: TokenPass) -> float:
    if a.top1.shape != b.top1.shape:
        raise ValueError(f"token passes differ in length ({a.top1.numel()} vs {b.top1.numel()})")
    return (a.top1 == b.top1).double().mean().item()


def kl_rows(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) in nats for each row of (N, V) logits, in float32. Identical rows give exactly 0."""
    lp, lq = F.log_softmax(logits_p.float(), -1), F.log_softmax(logits_q.float(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


@torch.no_grad()
def paired_text_kl(model_p, model_q, ids: torch.Tensor, context: int, stride: int,
                   batch_size: int = 4) -> dict:
    """Per-token KL(original || compressed) and top-1 agreement over every scored position of ``ids``."""
    kls, agree = [], []
    for group in _batches(ids, context, stride, batch_size):
        for (lp, _), (lq, _) in zip(_scored_logits(model_p, ids, group), _scored_logits(model_q, ids, group)):
            kls.append(kl_rows(lp, lq).double())
            agree.append(lp.argmax(-1) == lq.argmax(-1))
    kl, ag = torch.cat(kls), torch.cat(agree)
    return {"kl_mean": kl.mean().item(), "kl_max": kl.max().item(), "kl_p99": kl.quantile(0.99).item(),
            "top1_agreement": ag.double().mean().item(), "tokens": kl.numel()}


def sequence_agreement(reference: list[list[int]], other: list[list[int]]) -> dict:
    """How closely greedy outputs follow the original's: token agreement = matching positions over the
    original's length (a missing or extra token counts as a mismatch), exact = whole outputs identical,
    prefix = mean fraction of the original's tokens before the first divergence."""
    if len(reference) != len(other):
        raise ValueError(f"{len(reference)} reference outputs but {len(other)} to compare")
    match = total = exact = 0
    prefix = []
    for r, o in zip(reference, other):
        n = max(len(r), len(o))
        same = [i < len(r) and i < len(o) and r[i] == o[i] for i in range(n)]
        match += sum(same)
        total += n
        exact += r == o
        first_diff = same.index(False) if False in same else n
        prefix.append(first_diff / n if n else 1.0)
    return {"token_agreement": match / total if total else 1.0, "exact_match": exact / len(reference),
            "prefix_agreement": statistics.fmean(prefix) if prefix else 1.0, "outputs": len(reference)}


def interleaved_speed(model_a, model_b, repeats: int, prompt_len: int, decode_tokens: int,
                      warmup: int = 1) -> tuple[dict, dict]:
    """Speed of two models timed alternately in this process (a, b, a, b for each measurement); medians.

    Same measurements as ``eval.speed.measure_speed`` (prefill of a ``prompt_len`` prompt; greedy decode
    steps through the KV cache at batch 1 and 8). Alternating means a burst of load from other processes
    hits both models alike, so the ratio of the two is far steadier than either absolute figure.
    """
    jobs = {"prefill_tok_s": (lambda m: time_prefill(m, 1, prompt_len), prompt_len),
            "decode_tok_s_b1": (lambda m: time_decode(m, 1, 8, decode_tokens), decode_tokens),
            "decode_tok_s_b8": (lambda m: time_decode(m, 8, 8, decode_tokens), 8 * decode_tokens)}
    out_a, out_b = {}, {}
    for key, (fn, tokens) in jobs.items():
        for _ in range(warmup):
            fn(model_a), fn(model_b)
        times_a, times_b = [], []
        for _ in range(repeats):
            times_a.append(fn(model_a))
            times_b.append(fn(model_b))
        out_a[key], out_b[key] = tokens / statistics.median(times_a), tokens / statistics.median(times_b)
    meta = {"prompt_len": prompt_len, "decode_tokens": decode_tokens, "repeats": repeats,
            "threads": torch.get_num_threads()}
    return {**out_a, **meta}, {**out_b, **meta}
