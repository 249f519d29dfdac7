"""SmoothQuant (Xiao et al. 2023, arXiv:2211.10438): migrate activation outliers into the weights.

``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``, where ``max|W_j|`` is taken over every linear that
reads channel j. After folding (``scaling.py``) the activations ``X / s`` are flatter and the weights
``W * s`` a little rougher, so both quantise well to int8. Plain tensor functions; the calibration
driver collects ``max|X_j|`` and the alpha search lives in ``quantize.py``.
"""
from __future__ import annotations

import torch


def channel_absmax(x: torch.Tensor) -> torch.Tensor:
    """(..., K) activations -> (K,) per-channel max |x| in float32."""
    return x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()


def smoothing_scales(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float,
                     eps: float = 1e-5) -> torch.Tensor:
    """Per-input-channel smoothing factors (K,) for the linears ``weights`` (each (N_i, K)) that share
    one input."""
    w_absmax = torch.cat([w.float().abs() for w in weights], dim=0).amax(dim=0).clamp(min=eps)
    a = act_absmax.float().clamp(min=eps)
    s = a.pow(alpha) / w_absmax.pow(1.0 - alpha)
    return s.clamp(min=eps)
