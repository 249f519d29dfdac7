"""The integer grids of compressed-tensors' INT schemes, as plain functions over tensors.

compressed-tensors (the format llm-compressor writes, vLLM loads) dequantises ``w = (q - zp) * scale`` in
the scale's dtype, with signed codes: int8 in [-128, 127] (we use the symmetric [-127, 127], zp = 0) and
int4 in [-8, 7] with an *integer* zero point ``zp`` in [-8, 7] per group. leanlm's own int4 grid
(``compress/quant/primitives.py``) has a continuous zero, so an AWQ result is re-rounded here onto the
integer-zero grid; clip ratios found by AWQ's clip search shrink each group's [min, max] first.

Weights are ``(N, K)``; int4 groups run along K (``K % group == 0``, which ``group_size_for`` ensures).
Scales are rounded to ``scale_dtype`` before the codes are computed, so the codes are optimal for the
stored scales.
"""
from __future__ import annotations

import torch

INT4_MIN, INT4_MAX = -8, 7
INT8_MAX = 127


def group_size_for(k: int, preferred: int) -> int:
    """``preferred`` when it divides the layer width ``k``, else the largest of 64, 32 that does."""
    for g in (preferred, 64, 32):
        if g <= preferred and k % g == 0:
            return g
    raise ValueError(f"layer width {k} is not a multiple of 32; compressed-tensors group quantisation "
                     f"needs whole groups")


def quantize_int8_channel(w: torch.Tensor, scale_dtype: torch.dtype
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) -> (q int8 (N, K) in [-127, 127], scale (N, 1) in ``scale_dtype``), symmetric per row."""
    wf = w.float()
    scale = (wf.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / INT8_MAX).to(scale_dtype)
    q = torch.round(wf / scale.float()).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def quantize_int8_group(w: torch.Tensor, group: int, scale_dtype: torch.dtype
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) -> (q int8 (N, K) in [-127, 127], scale (N, G) in ``scale_dtype``), symmetric per group of K:
    leanlm's int8-block grid (``quantize_int8_blocks``), on whole groups only, as compressed-tensors wants."""
    from ..compress.quant.primitives import quantize_int8_blocks

    if w.shape[1] % group:
        raise ValueError(f"width {w.shape[1]} is not a multiple of group {group}")
    q, scale = quantize_int8_blocks(w, group, scale_dtype)
    return q, scale.to(scale_dtype)


def quantize_int4_group(w: torch.Tensor, group: int, scale_dtype: torch.dtype,
                        clip: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K) -> (q int8 (N, K) in [-8, 7], scale (N, G) ``scale_dtype``, zero point (N, G) int8).

    Asymmetric min/max per group (shrunk by ``clip`` (N, G) in (0, 1] when given); the range always
    contains 0 so that zero weights stay exact, as min/max observers do.
    """
    n, k = w.shape
    if k % group:
        raise ValueError(f"width {k} is not a multiple of group {group}")
    wg = w.float().view(n, k // group, group)
    lo, hi = wg.amin(dim=-1).clamp(max=0.0), wg.amax(dim=-1).clamp(min=0.0)
    if clip is not None:
        lo, hi = lo * clip.float(), hi * clip.float()
    scale = ((hi - lo) / (INT4_MAX - INT4_MIN)).clamp(min=1e-8).to(scale_dtype)
    s = scale.float()
    zp = (INT4_MIN - torch.round(lo / s)).clamp(INT4_MIN, INT4_MAX)
    q = (torch.round(wg / s[..., None]) + zp[..., None]).clamp(INT4_MIN, INT4_MAX)
    return q.view(n, k).to(torch.int8), scale, zp.to(torch.int8)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """``(q - zp) * scale`` in the scale's dtype, scale (N, 1) or (N, G) broadcast over equal groups."""
    n, k = q.shape
    g = scale.shape[1]
    x = q.view(n, g, k // g).to(scale.dtype)
    if zero_point is not None:
        x = x - zero_point.to(scale.dtype)[..., None]
    return (x * scale[..., None]).view(n, k)
