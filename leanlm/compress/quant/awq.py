"""AWQ (Lin et al. 2024, arXiv:2306.00978): activation-aware scale search and weight clipping for int4.

Scale search: for a group of linears sharing input X (T, K), try ``s = mean|X_j|^a`` (normalised so
``max(s) * min(s) = 1``) for ``a`` on a grid in [0, 1), quantise ``W * s``, and keep the ``s`` whose
output ``X/s @ Q(W*s)^T`` is closest (MSE) to the float output ``X @ W^T``. ``a = 0`` (s = 1) is plain
RTN, so the search never does worse than RTN on the calibration data. The loss is measured on the
output of an "inspect" module where the architecture table names one (the MLP for gate/up, as llm-awq),
otherwise on the linears' own outputs (llm-awq inspects the whole attention block for q/k/v).

Clipping: per (output row, group), shrink the quantisation range by ``r`` in {1, 1 - 1/grid, ...,
1 - max_shrink} and keep the ``r`` minimising that group's output error on sampled inputs.
"""
from __future__ import annotations

from typing import Callable

import torch

from .primitives import fake_quantize_int4, n_groups

QuantFn = Callable[[torch.Tensor], torch.Tensor]   # (N, K) float32 -> fake-quantised (N, K)
Forward = Callable[[list[torch.Tensor]], torch.Tensor]   # candidate weights -> output compared to float


def candidate_scales(x_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    s = x_mean.float().pow(alpha).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


def weight_channel_mean(weights: list[torch.Tensor], group: int) -> torch.Tensor:
    """Mean over rows of |w| normalised by its group's max |w|: (K,). AWQ's weight-side statistic."""
    w = torch.cat([wi.float() for wi in weights], dim=0)
    n, k = w.shape
    g = n_groups(k, group)
    wg = torch.nn.functional.pad(w.abs(), (0, g * group - k)).view(n, g, group)
    wg = wg / wg.amax(dim=-1, keepdim=True).clamp(min=1e-8)
    return wg.view(n, -1)[:, :k].mean(dim=0)


@torch.no_grad()
def search_scale(x: torch.Tensor, weights: list[torch.Tensor], quant: QuantFn, grid: int = 20,
                 w_mean: torch.Tensor | None = None,
                 forward: Forward | None = None) -> tuple[torch.Tensor, float, list[float]]:
    """Best per-input-channel scale (K,) for the linears ``weights`` on inputs ``x`` (T, K).

    Candidates: ``mean|x|^a`` and, when ``w_mean`` is given, also ``mean|x|^a / w_mean^(1-a)`` ("duo"
    scaling, as llm-compressor's AWQ). ``forward(ws)`` maps candidate weights (fake-quantised, scales
    divided back out) to the output whose MSE against the float output is minimised; default: the
    linears' own outputs ``x @ cat(ws)^T``. Returns (scale, alpha, loss per candidate).
    """
    x = x.float()
    ws = [wi.float() for wi in weights]
    forward = forward or (lambda cand: x @ torch.cat(cand, dim=0).t())
    ref = forward(ws)
    x_mean = x.abs().mean(dim=0)
    cands = [(i / grid, candidate_scales(x_mean, i / grid)) for i in range(grid)]
    if w_mean is not None:
        w_floor = w_mean.clamp(min=1e-4)
        cands += [(i / grid, candidate_scales(x_mean.pow(i / grid) / w_floor.pow(1 - i / grid), 1.0))
                  for i in range(1, grid)]
    losses, best = [], (float("inf"), None, 0.0)
    for alpha, s in cands:
        out = forward([quant(wi * s[None, :]) / s[None, :] for wi in ws])
        loss = float((out - ref).pow(2).mean())
        losses.append(loss)
        if loss < best[0]:
            best = (loss, s, alpha)
    return best[1], best[2], losses


@torch.no_grad()
def search_clip(x: torch.Tensor, w: torch.Tensor, group: int, grid: int = 20, max_shrink: float = 0.5,
                scale_dtype: torch.dtype = torch.float32, chunk_rows: int = 256) -> torch.Tensor:
    """Per-(row, group) clip ratio (N, G) for int4 group quantisation of ``w`` (N, K) on inputs ``x``
    (T, K)."""
    n, k = w.shape
    g = n_groups(k, group)
    pad = g * group - k
    xg = torch.nn.functional.pad(x.float(), (0, pad)).view(-1, g, group)      # (T, G, group)
    best_err = torch.full((n, g), float("inf"))
    best_r = torch.ones(n, g)
    steps = int(max_shrink * grid)
    for i in range(steps + 1):
        r = 1.0 - i / grid
        wq = fake_quantize_int4(w.float(), group, torch.full((n, g), r), scale_dtype)
        diff = torch.nn.functional.pad(wq - w.float(), (0, pad)).view(n, g, group)
        err = torch.empty(n, g)
        for a in range(0, n, chunk_rows):   # bound the (T, G, rows) temporary
            d = torch.einsum("tgk,ngk->ngt", xg, diff[a:a + chunk_rows])
            err[a:a + chunk_rows] = d.pow(2).mean(dim=-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_r = torch.where(better, torch.full_like(best_r, r), best_r)
    return best_r

