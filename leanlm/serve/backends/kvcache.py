"""Batch surgery on a transformers ``DynamicCache`` with left padding: keep rows, join batches, trim.

Every layer holds ``keys`` / ``values`` of shape ``(B, H, T, D)``; ``mask`` is ``(B, T)`` with 0 on the left
padding. Rows of different lengths share one tensor by left-padding the shorter ones (as ``generate``
pads prompts), so a decode step is one forward pass over the whole batch.
"""
from __future__ import annotations

import torch


def layers_of(cache) -> list:
    layers = getattr(cache, "layers", None)
    if layers is None or not all(hasattr(layer, "keys") for layer in layers):
        raise TypeError(f"{type(cache).__name__} is not a per-layer key/value cache; the torch backend "
                        "batches DynamicCache only")
    return layers


def _pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def select_rows(cache, mask: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Keep ``rows`` (in order, repeats allowed) in place in ``cache``; return the matching mask, with the
    padding columns every remaining row shares trimmed away."""
    idx = torch.tensor(rows, dtype=torch.long)
    mask = mask[idx]
    lead = int((mask.cumsum(1) == 0).sum(1).min()) if len(rows) else 0   # columns of padding in every row
    for layer in layers_of(cache):
        layer.keys = layer.keys[idx, :, lead:]
        layer.values = layer.values[idx, :, lead:]
    return mask[:, lead:]


def join(cache_a, mask_a: torch.Tensor, cache_b, mask_b: torch.Tensor) -> torch.Tensor:
    """Append ``cache_b``'s rows to ``cache_a`` (in place), left-padding the shorter one; return the mask."""
    ta, tb = mask_a.shape[1], mask_b.shape[1]
    t = max(ta, tb)
    for la, lb in zip(layers_of(cache_a), layers_of(cache_b)):
        la.keys = torch.cat([_pad_left(la.keys, t - ta, 2), _pad_left(lb.keys, t - tb, 2)], dim=0)
        la.values = torch.cat([_pad_left(la.values, t - ta, 2), _pad_left(lb.values, t - tb, 2)], dim=0)
    return torch.cat([_pad_left(mask_a, t - ta, 1), _pad_left(mask_b, t - tb, 1)], dim=0)
