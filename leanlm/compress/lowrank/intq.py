"""Symmetric per-row int8 quantisation of factors, and its straight-through fake-quant twin.

Each row gets one scale ``absmax / 127``; codes lie in ``[-127, 127]`` (``-128`` unused, so the grid is
symmetric). Per-row scales fold out of a matmul: for ``A = diag(sa) Aq`` and ``B = diag(sb) Bq``,
``x @ B.T @ A.T = ((x @ Bq.T) * sb) @ Aq.T * sa``, so a layer runs on the int8 codes and two vector
multiplies and never rebuilds a float factor or the dense weight.
"""
from __future__ import annotations

import torch

QMAX = 127


def quantize_rows(x: torch.Tensor, group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes int8 (R, C), scales float32 (R,))`` with ``x ~= codes * scales[:, None]``.

    ``group > 0``: one scale per ``group`` consecutive entries of a row instead (GGUF's Q8_0 layout for
    ``group=32``); scales are then ``(R, C // group)``."""
    if x.dim() != 2:
        raise ValueError(f"expected a 2-D factor, got shape {tuple(x.shape)}")
    if group:
        rows, cols = x.shape
        if group < 1 or cols % group:
            raise ValueError(f"group {group} does not divide the row length {cols}")
        codes, scale = quantize_rows(x.reshape(rows * cols // group, group))
        return codes.reshape(rows, cols), scale.reshape(rows, cols // group)
    xf = x.double()
    scale = xf.abs().amax(dim=1) / QMAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero rows: any scale is exact
    codes = torch.round(xf / scale[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return codes, scale.float()


def dequantize_rows(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of ``quantize_rows``; a 2-D ``scale`` is per group (its columns divide the row evenly)."""
    if scale.dim() == 2:
        rows, cols = codes.shape
        grouped = codes.to(torch.float32).reshape(rows, scale.shape[1], -1) * scale.float()[..., None]
        return grouped.reshape(rows, cols).to(dtype)
    return (codes.to(torch.float32) * scale.float()[:, None]).to(dtype)


class _FakeQuantRows(torch.autograd.Function):
    """Forward: quantise-dequantise per row. Backward: identity (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ARG004 - autograd signature
        scale = (x.detach().abs().amax(dim=1, keepdim=True) / QMAX).clamp_min(1e-12)
        return torch.round(x / scale).clamp(-QMAX, QMAX) * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return grad


def fake_quant_rows(x: torch.Tensor) -> torch.Tensor:
    """``dequantize_rows(*quantize_rows(x))`` in the forward pass, identity gradient in the backward."""
    return _FakeQuantRows.apply(x)
