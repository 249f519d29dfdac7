"""Perplexity with a fixed protocol.

Protocol (``EvalConfig``): the ``eval`` half of the corpus is tokenized once without special tokens;
the first ``max_tokens`` tokens are cut into windows of ``context`` tokens starting every ``stride``
tokens. A window scores the tokens after the previous window's end (and never its own first token,
which has no context), so no token is scored twice. With the default ``stride == context`` windows do
not overlap and each window's first token is context only (tokens scored = tokens - windows, as in the
Hugging Face perplexity guide); with ``stride < context`` every token after the first is scored, with
at least ``context - stride`` tokens of context. Perplexity = exp(total NLL / tokens scored); logits
are upcast to float32 before the log-softmax and NLL is summed in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float            # mean negative log-likelihood per scored token (nats)
    tokens_scored: int
    windows: int


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first_scored) for each window; no position is scored twice (see the protocol)."""
    out, prev_end, start = [], 0, 0
    while prev_end < n_tokens:
        end = min(start + context, n_tokens)
        first = max(prev_end, start + 1)
        if end > first:
            out.append((start, end, first))
        prev_end = end
        start += stride
        if end == n_tokens:
            break
    return out


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL: logits (B, T, V) predict targets (B, T). Returns (B, T) float32."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, context: int = 512, stride: int = 512, batch_size: int = 4,
               progress: bool = True) -> PerplexityResult:
    """Perplexity of ``model`` on the 1-D token tensor ``ids`` under the protocol above."""
    if ids.dim() != 1 or ids.numel() < 2:
        raise ValueError("perplexity needs a 1-D tensor of at least 2 token ids")
    if not 0 < stride <= context:
        raise ValueError(f"need 0 < stride ({stride}) <= context ({context})")
    device = next(model.parameters()).device
    wins = windows(ids.numel(), context, stride)
    total, count = 0.0, 0
    bar = tqdm(total=len(wins), desc="perplexity", unit="win", disable=not progress, leave=False)
    # Windows of equal length batch together (all but possibly the last).
    for i in range(0, len(wins), batch_size):
        group = wins[i:i + batch_size]
        lengths = {e - s for s, e, _ in group}
        batches = [group] if len(lengths) == 1 else [[w] for w in group]
        for b in batches:
            x = torch.stack([ids[s:e] for s, e, _ in b]).to(device)
            logits = model(input_ids=x, use_cache=False).logits  # (B, T, V)
            nll = token_nll(logits[:, :-1], x[:, 1:])           # (B, T-1): position t predicts t+1
            for row, (s, e, first) in enumerate(b):
                scored = nll[row, first - s - 1:]
                total += scored.double().sum().item()
                count += scored.numel()
        bar.update(len(group))
    bar.close()
    mean = total / count
    return PerplexityResult(perplexity=math.exp(mean), nll=mean, tokens_scored=count, windows=len(wins))


def corpus_ids(tok, text: str, max_tokens: int) -> torch.Tensor:
    ids = tok(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids[:max_tokens], dtype=torch.long)
