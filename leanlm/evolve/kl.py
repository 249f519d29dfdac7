"""KL(generation || generation 0): how far a generation's next-token distributions moved from where the
run started, on fixed texts (held-out prompts of every skill, chat-formatted, and neutral corpus text).

``token_kl`` is the math (per position, over the vocabulary); ``kl_to_reference`` runs both models over
the same token batches and averages over every real (non-padding) position. Reported in nats per token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def token_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position: (..., V) logits -> (...) nats, computed in float32."""
    lp, lq = F.log_softmax(logits_p.float(), -1), F.log_softmax(logits_q.float(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


@torch.no_grad()
def kl_to_reference(model, ref, tok, texts: list[str], batch_size: int = 8, max_len: int = 128) -> float:
    """Mean KL(model || ref) over every non-padding position of ``texts`` (each cut to ``max_len`` tokens)."""
    if not texts:
        raise ValueError("kl_to_reference needs at least one text")
    total, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        rows = [tok(t, add_special_tokens=False)["input_ids"][:max_len] for t in texts[i:i + batch_size]]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):                      # right padding: positions need no shift
            ids[j, :len(r)], mask[j, :len(r)] = torch.tensor(r), 1
        kl = token_kl(model(input_ids=ids, attention_mask=mask).logits,
                      ref(input_ids=ids, attention_mask=mask).logits)      # (B, T)
        total += float((kl * mask).sum())
        count += int(mask.sum())
    return total / count
