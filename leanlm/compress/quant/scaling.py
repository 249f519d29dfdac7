"""Per-channel scale folding: the function-preserving transform shared by SmoothQuant and AWQ.

For a producer P whose output channel j feeds input channel j of linears W_1..W_m, dividing P's output
by ``s_j`` and multiplying column j of every W_i by ``s_j`` leaves ``W_i x`` unchanged in exact
arithmetic. P is an RMSNorm (``y = x_hat * (offset + w)``: the new weight is ``(offset + w) / s - offset``)
or a linear (its output rows and bias are divided by ``s``). All math in float32 (float64 for float64
tensors), cast back at the end.
"""
from __future__ import annotations

import torch


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float32, or float64 when the tensor already is (tests check the transform in float64)."""
    return t if t.dtype == torch.float64 else t.float()


def fold_into_norm(weight: torch.Tensor, s: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
    """New RMSNorm weight whose output equals the old output divided by ``s``."""
    return ((offset + _wide(weight)) / s - offset).to(weight.dtype)


def fold_into_producer_rows(weight: torch.Tensor, bias: torch.Tensor | None, s: torch.Tensor):
    """Divide a producing linear's output rows (and bias) by ``s``: (N, K) / s[:, None]."""
    new_w = (_wide(weight) / s[:, None]).to(weight.dtype)
    new_b = None if bias is None else (_wide(bias) / s).to(bias.dtype)
    return new_w, new_b


def scale_input_columns(weight: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Multiply a consuming linear's input columns by ``s``: (N, K) * s[None, :]."""
    return (_wide(weight) * s[None, :]).to(weight.dtype)
