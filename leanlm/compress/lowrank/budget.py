"""Per-matrix ranks that meet a global parameter budget exactly.

Each candidate matrix ``(out, in)`` can be stored as rank-``r`` factors (``r (out + in)`` parameters,
``1 <= r <= break_even``) or kept dense (``out * in``). Going from rank ``r`` to ``r + 1`` costs
``out + in`` parameters and wins back ``gain[r]`` (the squared singular value it keeps: the weight error
for plain SVD, the calibration output error for whitened SVD); going from ``break_even`` to dense wins back
the whole remaining tail for ``out*in - break_even*(out+in)`` parameters.

``allocate_ranks`` spends the budget greedily by gain per parameter (``GLOBAL``), or first gives every
matrix the same fraction of its break-even rank and then spends what is left greedily (``UNIFORM``, the
per-matrix ratio used by SVD-LLM). Either way the result is exact in the only sense integer ranks allow:
kept parameters never exceed the budget, and no matrix could take one more step without exceeding it.
"""
from __future__ import annotations

import enum
import heapq
import math
from dataclasses import dataclass

import torch

from .svd import break_even_rank, params_at_rank

DENSE = -1  # rank value meaning "keep the dense matrix"


class Allocation(str, enum.Enum):
    UNIFORM = "uniform"
    GLOBAL = "global"


@dataclass(frozen=True)
class MatrixBudget:
    name: str
    out_features: int
    in_features: int
    gains: torch.Tensor  # (min(out, in),) squared singular values, descending

    @property
    def dense_params(self) -> int:
        return self.out_features * self.in_features

    @property
    def cap(self) -> int:
        return max(1, min(break_even_rank(self.out_features, self.in_features), self.gains.numel()))


def kept_params(m: MatrixBudget, rank: int) -> int:
    return m.dense_params if rank == DENSE else params_at_rank(m.out_features, m.in_features, rank)


def target_params(total: int, remove: float) -> int:
    """Parameters that may be kept when removing the fraction ``remove`` of ``total`` (rounded down)."""
    if not 0.0 < remove < 1.0:
        raise ValueError(f"remove must be in (0, 1), got {remove}")
    return int(total * (1.0 - remove))


def _step(m: MatrixBudget, rank: int) -> tuple[float, int] | None:
    """(gain, cost) of the next step from ``rank``, or None when the matrix is already dense."""
    if rank == DENSE:
        return None
    if rank < m.cap:
        return float(m.gains[rank]), m.out_features + m.in_features
    tail = float(m.gains[rank:].sum())
    return tail, m.dense_params - kept_params(m, rank)


def allocate_ranks(mats: list[MatrixBudget], budget: int, allocation: Allocation = Allocation.GLOBAL,
                   allow_dense: bool = True) -> dict[str, int]:
    """Rank per matrix name (``DENSE`` for dense) with ``sum(kept) <= budget``, maximal as described above."""
    names = [m.name for m in mats]
    if len(set(names)) != len(names):
        raise ValueError("matrix names must be unique")
    ranks = {m.name: 1 for m in mats}
    spent = sum(kept_params(m, 1) for m in mats)
    if spent > budget:
        raise ValueError(f"budget {budget} is below the {spent} parameters that rank 1 everywhere needs")
    if allocation == Allocation.UNIFORM:
        ratio = budget / sum(m.dense_params for m in mats)
        for m in mats:
            ranks[m.name] = max(1, min(m.cap, int(ratio * m.cap)))
        spent = sum(kept_params(m, ranks[m.name]) for m in mats)
    heap: list[tuple[float, int, int]] = []
    by_idx = dict(enumerate(mats))

    def push(i: int) -> None:
        m = by_idx[i]
        nxt = _step(m, ranks[m.name])
        if nxt is not None and (allow_dense or ranks[m.name] < m.cap):
            heapq.heappush(heap, (-nxt[0] / nxt[1] if nxt[1] else -math.inf, i, nxt[1]))

    for i in by_idx:
        push(i)
    while heap:
        _, i, cost = heapq.heappop(heap)
        m = by_idx[i]
        if spent + cost > budget:
            continue  # later steps of this matrix cost at least as much as the dense step is reached only after
        ranks[m.name] = DENSE if ranks[m.name] >= m.cap else ranks[m.name] + 1
        spent += cost
        push(i)
    return ranks


def total_kept(mats: list[MatrixBudget], ranks: dict[str, int]) -> int:
    return sum(kept_params(m, ranks[m.name]) for m in mats)
