"""Tensor-train (TT) decomposition of a batch of vectors, as TensorGPT (Xu et al. 2023) does for embeddings.

Each row ``x`` (length ``d = d1 * ... * dk``) is reshaped into a ``(d1, ..., dk)`` tensor and written as a
train of cores ``G_i`` of shape ``(r_{i-1}, d_i, r_i)`` (``r_0 = r_k = 1``) by TT-SVD (Oseledets 2011):
sweep left to right, each step a truncated SVD of the remainder unfolded as ``(r_{i-1} d_i, rest)``.
Rows are independent, so the SVDs run batched over rows. Math in float64.
"""
from __future__ import annotations

import math

import torch


def full_tt_ranks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Largest useful inner ranks ``(r_1, ..., r_{k-1})``: ``min(prod(left dims), prod(right dims))``."""
    return tuple(min(math.prod(shape[:i + 1]), math.prod(shape[i + 1:])) for i in range(len(shape) - 1))


def tt_params(shape: tuple[int, ...], ranks: tuple[int, ...]) -> int:
    """Parameters of one row's cores."""
    r = (1, *ranks, 1)
    return sum(r[i] * shape[i] * r[i + 1] for i in range(len(shape)))


def tt_svd(x: torch.Tensor, shape: tuple[int, ...], ranks: tuple[int, ...]) -> list[torch.Tensor]:
    """Cores ``(N, r_{i-1}, d_i, r_i)`` of each row of ``x (N, prod(shape))`` with inner ranks ``ranks``."""
    n, d = x.shape
    if math.prod(shape) != d:
        raise ValueError(f"TT shape {shape} has {math.prod(shape)} elements; rows have {d}")
    if len(ranks) != len(shape) - 1:
        raise ValueError(f"{len(shape)} cores need {len(shape) - 1} inner ranks, got {ranks}")
    full = full_tt_ranks(shape)
    if any(not 1 <= r <= f for r, f in zip(ranks, full)):
        raise ValueError(f"TT ranks {ranks} must lie in [1, {full}] for shape {shape}")
    rest = x.double()
    cores, r_prev = [], 1
    for dim, r in zip(shape[:-1], ranks):
        mat = rest.reshape(n, r_prev * dim, -1)                        # (N, r_prev*d_i, rest)
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)
        cores.append(u[:, :, :r].reshape(n, r_prev, dim, r))
        rest = s[:, :r, None] * vh[:, :r]                              # (N, r, rest)
        r_prev = r
    cores.append(rest.reshape(n, r_prev, shape[-1], 1))
    return cores


def tt_reconstruct(cores: list[torch.Tensor]) -> torch.Tensor:
    """Rows ``(N, prod(d_i))`` from cores ``(N, r_{i-1}, d_i, r_i)`` (contracted in the cores' dtype)."""
    n = cores[0].shape[0]
    acc = cores[0].reshape(n, cores[0].shape[2], cores[0].shape[3])   # (N, d_1, r_1)
    for core in cores[1:]:
        acc = torch.einsum("npr,nrdq->npdq", acc, core)                  # (N, D, d_i, r_i)
        acc = acc.reshape(n, -1, core.shape[3])
    return acc.reshape(n, -1)


def best_ranks(shape: tuple[int, ...], max_params: int) -> tuple[int, ...]:
    """Inner ranks with the most parameters ``<= max_params`` (ties: the most balanced)."""
    full = full_tt_ranks(shape)
    best, best_key = None, None
    for ranks in _rank_grid(full):
        p = tt_params(shape, ranks)
        key = (p, -max(ranks) + min(ranks))
        if p <= max_params and (best_key is None or key > best_key):
            best, best_key = ranks, key
    if best is None:
        raise ValueError(f"even rank 1 needs {tt_params(shape, (1,) * len(full))} parameters per row; budget {max_params}")
    return best


def _rank_grid(full: tuple[int, ...]):
    if not full:
        yield ()
        return
    for r in range(1, full[0] + 1):
        for tail in _rank_grid(full[1:]):
            yield (r, *tail)


def default_shape(d: int, cores: int = 3) -> tuple[int, ...]:
    """Factor ``d`` into ``cores`` near-equal integer factors (e.g. 576 -> (8, 8, 9))."""
    shape, rest = [], d
    for k in range(cores, 1, -1):
        target = round(rest ** (1 / k))
        f = min((f for f in range(1, rest + 1) if rest % f == 0), key=lambda f: (abs(f - target), f))
        shape.append(f)
        rest //= f
    shape.append(rest)
    return tuple(sorted(shape))
