"""Gradient surgery (PCGrad, Yu et al. 2020, "Gradient Surgery for Multi-Task Learning"), as pure functions.

The loop trains on new data while protecting a retention set. When the new-data gradient ``g_new``
conflicts with the retention gradient ``g_ret`` (negative dot product), ``g_new`` loses its component
along ``g_ret``::

    g_new <- g_new - (g_new . g_ret / ||g_ret||^2) g_ret

so a step on the new data no longer increases the retention loss to first order. Only the new-data
gradient is projected: retention is the constraint, not a peer task (as in A-GEM). The update is the
projected ``g_new`` plus ``g_ret``; with surgery off it is the plain sum, same data and budget.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SurgeryInfo:
    dot: float            # g_new . g_ret before projection
    cosine: float         # cosine between them before projection
    projected: bool       # True when they conflicted and g_new was projected


def project_conflicting(g_new: torch.Tensor, g_ret: torch.Tensor, eps: float = 1e-20) -> tuple[torch.Tensor, SurgeryInfo]:
    """``g_new`` with its component along ``g_ret`` removed when the two conflict. 1-D tensors, same shape."""
    if g_new.shape != g_ret.shape or g_new.dim() != 1:
        raise ValueError(f"need two 1-D gradients of one shape, got {tuple(g_new.shape)} and {tuple(g_ret.shape)}")
    a, b = g_new.double(), g_ret.double()
    dot = float(a @ b)
    norm2 = float(b @ b)
    cos = dot / max((float(a @ a) * norm2) ** 0.5, eps)
    if dot >= 0 or norm2 <= eps:
        return g_new, SurgeryInfo(dot, cos, False)
    return (a - (dot / norm2) * b).to(g_new.dtype), SurgeryInfo(dot, cos, True)


def combine(g_new: torch.Tensor, g_ret: torch.Tensor | None, surgery: bool,
            ret_weight: float = 1.0) -> tuple[torch.Tensor, SurgeryInfo | None]:
    """The update direction: (projected) ``g_new`` + ``ret_weight * g_ret``; just ``g_new`` without retention."""
    if g_ret is None:
        return g_new, None
    g_ret = ret_weight * g_ret
    if surgery:
        g_new, info = project_conflicting(g_new, g_ret)
    else:
        _, info = project_conflicting(g_new, g_ret)
        info = SurgeryInfo(info.dot, info.cosine, False)
    return g_new + g_ret, info
