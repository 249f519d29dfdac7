"""Calibration data: seeded token sequences from the ``calib`` half of the offline corpus.

Shared by every method that calibrates (SmoothQuant, AWQ, whitened SVD) and by recovery training, so
they all see the same data, and none of it overlaps the perplexity ``eval`` half.
"""
from __future__ import annotations

import torch

from ..eval.corpus import load_corpus, split_corpus


def calibration_ids(tok, n: int = 128, seq_len: int = 512, seed: int = 0, corpus: str | None = None) -> torch.Tensor:
    """``(n, seq_len)`` token ids: windows at seeded random offsets into the corpus's calib half."""
    # the mix is made of calib halves already; any other corpus gives its calib half
    text = load_corpus(corpus) if corpus == "mix" else split_corpus(load_corpus(corpus), "calib")
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if ids.numel() < seq_len + 1:
        raise ValueError(f"calibration text has {ids.numel()} tokens; need more than seq_len={seq_len}")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len, (n,), generator=g)
    return torch.stack([ids[s:s + seq_len] for s in starts.tolist()])
