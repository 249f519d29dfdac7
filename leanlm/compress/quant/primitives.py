"""Quantise / dequantise / pack primitives: plain functions over tensors, no model knowledge.

Conventions (weights are ``(out_features N, in_features K)``, as in ``nn.Linear``):

* INT8 symmetric per output channel: ``w ~= q * scale``, ``q`` in [-127, 127], ``scale`` of shape (N,).
* INT8 symmetric in blocks of 32 along K (llama.cpp's Q8_0 grid): ``w ~= q * scale``, ``scale`` (N, G).
* INT4 asymmetric group-wise along K: ``w ~= (q - 8) * scale + zero``, ``q`` in [0, 15], ``scale`` and
  ``zero`` of shape (N, G) with ``G = ceil(K / group)``; the last group may be shorter than ``group``.
  This is the parametrisation of torch's int4 weight kernels (``zero`` is the value at mid-code 8,
  i.e. ``min + 8 * scale``), so the codes feed them unchanged.
* Activations, per token: ``x ~= q * scale``, ``q`` int8, ``scale`` (M, 1).

Scales are rounded to ``scale_dtype`` (the dtype the kernels get) *before* the codes are computed, so
the codes are optimal for the scales that are actually stored.
"""
from __future__ import annotations

import math

import torch

INT8_MAX = 127
INT4_LEVELS = 15
INT4_MID = 8


def _round_to(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).to(torch.float32)


# ---------------------------------------------------------------- int8 symmetric per channel
def quantize_int8(w: torch.Tensor,
                  scale_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> (q int8 (N, K), scale (N,) float32, exactly representable in ``scale_dtype``)."""
    wf = w.float()
    amax = wf.abs().amax(dim=-1).clamp(min=1e-8)
    scale = _round_to(amax / INT8_MAX, scale_dtype)
    q = torch.round(wf / scale[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.float()[:, None]


INT8_BLOCK = 32


def quantize_int8_blocks(w: torch.Tensor, group: int = INT8_BLOCK,
                         scale_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> (q int8 (N, K), scale (N, G) float32): symmetric int8 with one scale per ``group``
    values along K (the last group may be shorter), the grid of llama.cpp's Q8_0 at ``group=32``."""
    n, k = w.shape
    wg = _grouped(w.float(), group)
    scale = _round_to((wg.abs().amax(dim=-1) / INT8_MAX).clamp(min=1e-8), scale_dtype)
    q = torch.round(wg / scale[..., None]).clamp(-INT8_MAX, INT8_MAX)
    return q.view(n, -1)[:, :k].to(torch.int8), scale


def dequantize_int8_blocks(q: torch.Tensor, scale: torch.Tensor, group: int = INT8_BLOCK) -> torch.Tensor:
    k = q.shape[1]
    return q.float() * scale.float().repeat_interleave(group, dim=1)[:, :k]


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric int8 per row: (M, K) -> (q int8 (M, K), scale (M, 1) in x's dtype)."""
    scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-6) / INT8_MAX
    q = torch.round(x / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


# ---------------------------------------------------------------- int4 asymmetric group-wise
def n_groups(k: int, group: int) -> int:
    return math.ceil(k / group)


def _grouped(w: torch.Tensor, group: int) -> torch.Tensor:
    """(N, K) -> (N, G, group), the ragged last group padded by repeating its first element."""
    n, k = w.shape
    g = n_groups(k, group)
    pad = g * group - k
    if pad:
        last_start = (g - 1) * group
        w = torch.cat([w, w[:, last_start:last_start + 1].expand(n, pad)], dim=1)
    return w.view(n, g, group)


def group_minmax(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group min and max, each (N, G), in float32."""
    wg = _grouped(w.float(), group)
    return wg.amin(dim=-1), wg.amax(dim=-1)


def quantize_int4(w: torch.Tensor, group: int = 128, clip: torch.Tensor | None = None,
                  scale_dtype: torch.dtype = torch.float32
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, K) float -> (q uint8 (N, K) in [0, 15], scale (N, G), zero (N, G)), float32 scale/zero.

    ``clip`` (N, G) in (0, 1] shrinks each group's [min, max] range before quantising (AWQ's clipping).
    """
    n, k = w.shape
    lo, hi = group_minmax(w, group)
    if clip is not None:
        lo, hi = lo * clip, hi * clip
    scale = _round_to(((hi - lo) / INT4_LEVELS).clamp(min=1e-8), scale_dtype)
    zero = _round_to(lo + INT4_MID * scale, scale_dtype)
    wg = _grouped(w.float(), group)
    q = torch.round((wg - zero[..., None]) / scale[..., None] + INT4_MID).clamp(0, INT4_LEVELS)
    return q.view(n, -1)[:, :k].to(torch.uint8), scale, zero


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int) -> torch.Tensor:
    n, k = q.shape
    s = scale.float().repeat_interleave(group, dim=1)[:, :k]
    z = zero.float().repeat_interleave(group, dim=1)[:, :k]
    return (q.float() - INT4_MID) * s + z


def fake_quantize_int4(w: torch.Tensor, group: int = 128, clip: torch.Tensor | None = None,
                       scale_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Quantise then dequantise (used only by calibration searches)."""
    return dequantize_int4(*quantize_int4(w, group, clip, scale_dtype), group).to(w.dtype)


def fake_quantize_int8(w: torch.Tensor, scale_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return dequantize_int8(*quantize_int8(w, scale_dtype)).to(w.dtype)


# ---------------------------------------------------------------- nibble packing (portable layout)
def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(N, K) uint8 codes in [0, 15], K even -> (N, K/2) uint8: column 2i in the low nibble, 2i+1 high."""
    if q.shape[-1] % 2:
        raise ValueError(f"pack_int4 needs an even number of columns, got {q.shape[-1]}")
    if q.dtype != torch.uint8 or int(q.max()) > INT4_LEVELS:
        raise ValueError("pack_int4 needs uint8 codes in [0, 15]")
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    out = torch.empty(packed.shape[0], packed.shape[1] * 2, dtype=torch.uint8)
    out[:, 0::2] = packed & 0x0F
    out[:, 1::2] = packed >> 4
    return out


# ---------------------------------------------------------------- error measures
def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantisation-noise ratio in dB, computed in float64."""
    ref = reference.double()
    noise = (ref - approx.double()).pow(2).sum()
    return float(10 * torch.log10(ref.pow(2).sum() / noise.clamp(min=1e-300)))
