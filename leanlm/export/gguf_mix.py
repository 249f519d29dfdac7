"""``--bpw B``: a per-tensor mix of llama.cpp types that meets a whole-file budget, chosen by measured sensitivity.

llama-quantize's file types are fixed recipes (``Q4_K_M`` gives every ``ffn_down`` of some layers Q6_K ...).
``--bpw`` instead measures what each tensor's rounding costs and spends the bytes where they buy the most:

1. **sensitivity** (``fisher_diag``): the diagonal empirical Fisher of the calibration text's next-token
   loss, the mean squared gradient of every weight over short windows. ``0.5 * sum F * (W - Q)^2`` is the
   second-order estimate of how much a rounding ``Q`` raises the loss (the estimate SqueezeLLM and HAWQ use);
2. **candidates** (``candidate_types``): each matrix is quantised (by ``export_gguf``'s own quantiser) in
   every type its rows allow: the K-quants Q2_K..Q6_K and Q8_0 when a row is a multiple of 256, otherwise
   the 32-block types Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0. Rows that are not multiples of 256 cannot go below
   Q4_0's 4.5 bits in any llama.cpp type, which sets the smallest budget a model allows (``MixBudgetError``
   names it);
3. **choice** (``choose``): per tensor, the lower convex hull of (bytes, cost); the hull segments of all
   tensors, taken in order of loss saved per byte while they fit the budget (the Lagrangian solution of the
   knapsack, exact at the hull's vertices). The file is the chosen blocks, in llama.cpp's layout.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm


log = logging.getLogger(__name__)

K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0")      # rows that are multiples of 256
BLOCK32_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")         # any row that is a multiple of 32


class MixBudgetError(ValueError):
    """A ``--bpw`` budget no mix of llama.cpp types can meet."""


@dataclass(frozen=True)
class Candidate:
    qtype: str
    bytes: int
    cost: float                 # 0.5 * sum F * (W - Q)^2: estimated loss increase, nats per token
    blocks: np.ndarray          # packed rows, ready for the writer
    rel_error: float            # H-weighted relative error (what the fixed-type export reports)
    how: str


def candidate_types(shape: tuple[int, ...]) -> tuple[str, ...]:
    cols = shape[-1]
    if cols % 256 == 0:
        return K_TYPES
    if cols % 32 == 0:
        return BLOCK32_TYPES
    return ()


def fisher_diag(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{HF parameter name: mean squared gradient}`` of the next-token loss over the windows ``ids`` (n, T),
    one window per backward pass; 2-D parameters only (what is quantised)."""
    params = {n: p for n, p in model.named_parameters() if p.dim() >= 2}
    was = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(n in params)
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    model.eval()
    try:
        for w in tqdm(ids, desc="sensitivity (Fisher)", leave=False):
            model.zero_grad(set_to_none=True)
            loss = model(input_ids=w[None], labels=w[None]).loss
            if not torch.isfinite(loss):
                raise ValueError("calibration loss is not finite: the source model's weights are broken")
            loss.backward()
            for n, p in params.items():
                acc[n].addcmul_(p.grad, p.grad)
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            p.requires_grad_(was[n])
    return {n: a / len(ids) for n, a in acc.items()}


def loss_cost(fisher: np.ndarray | None, arr: np.ndarray, dequant: torch.Tensor) -> float:
    """``0.5 * sum F * (W - Q)^2`` (plain squared error when no Fisher is given)."""
    d = torch.from_numpy(arr) - dequant.to(torch.float32)
    if fisher is None:
        return float(0.5 * (d * d).sum())
    return float(0.5 * (torch.from_numpy(fisher) * d * d).sum())


def _hull(cands: list[Candidate]) -> list[Candidate]:
    """The lower convex hull of (bytes, cost), cheapest first; dominated candidates dropped."""
    pts = sorted(cands, key=lambda c: (c.bytes, c.cost))
    front: list[Candidate] = []
    for c in pts:                                      # keep only strict cost improvements as bytes grow
        if front and c.bytes == front[-1].bytes:
            continue
        if not front or c.cost < front[-1].cost:
            front.append(c)
    hull: list[Candidate] = []
    for c in front:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b is above the segment a -> c: drop it (its saving per byte is worse than c's)
            if (b.cost - a.cost) * (c.bytes - a.bytes) >= (c.cost - a.cost) * (b.bytes - a.bytes):
                hull.pop()
            else:
                break
        hull.append(c)
    return hull


def smallest_bytes(cands: dict[str, list[Candidate]]) -> int:
    return sum(min(c.bytes for c in cs) for cs in cands.values())


def choose(cands: dict[str, list[Candidate]], budget_bytes: int) -> dict[str, Candidate]:
    """Each tensor's candidate under a total of ``budget_bytes``: hull segments by loss saved per byte."""
    hulls = {n: _hull(cs) for n, cs in cands.items()}
    level = {n: 0 for n in hulls}
    spent = sum(h[0].bytes for h in hulls.values())
    if spent > budget_bytes:
        raise MixBudgetError(f"budget {budget_bytes} bytes is below the smallest mix ({spent} bytes)")
    segs = []
    for n, h in hulls.items():
        for i in range(1, len(h)):
            segs.append(((h[i - 1].cost - h[i].cost) / (h[i].bytes - h[i - 1].bytes), n, i))
    segs.sort(key=lambda s: (-s[0], s[1], s[2]))
    for _, n, i in segs:
        if level[n] != i - 1:          # an earlier segment of this tensor did not fit
            continue
        d = hulls[n][i].bytes - hulls[n][i - 1].bytes
        if spent + d <= budget_bytes:
            level[n], spent = i, spent + d
    return {n: hulls[n][level[n]] for n in hulls}


def budget_for(bpw: float, n_weights: int, fixed_bytes: int, cands: dict[str, list[Candidate]],
               n_narrow: int) -> int:
    """Bytes the quantised tensors may take for a whole-file ``bpw`` (all tensors over all weights)."""
    budget = int(bpw * n_weights / 8) - fixed_bytes
    floor = smallest_bytes(cands)
    if budget < floor:
        lowest = 8 * (floor + fixed_bytes) / n_weights
        why = (f"; {n_narrow} of its {len(cands)} matrices have rows that are not multiples of 256 and cannot "
               f"go below Q4_0's 4.5 bits in any llama.cpp type") if n_narrow else ""
        raise MixBudgetError(f"--bpw {bpw:g} is below the smallest mix this model allows ({lowest:.3f} "
                             f"bits per weight){why}")
    return budget


def mix_plan(chosen: dict[str, Candidate], names: list[str], fixed: dict[str, str]) -> dict[str, dict]:
    """``plan_types``-shaped plan: the chosen type of each matrix, F32 for what is not quantised."""
    plan = {}
    for n in names:
        if n in chosen:
            c = chosen[n]
            plan[n] = {"type": c.qtype, "wanted": c.qtype,
                       "reason": f"mix: est. loss +{c.cost:.3g} nats"}
        else:
            plan[n] = {"type": fixed[n], "wanted": fixed[n], "reason": "1-D or norm: kept F32"}
    return plan


def main_type(chosen: dict[str, Candidate]) -> str:
    """The type holding most of the mix's bytes (for ``general.file_type``)."""
    by: dict[str, int] = {}
    for c in chosen.values():
        by[c.qtype] = by.get(c.qtype, 0) + c.bytes
    return max(by, key=by.get)


# general.file_type for a mix: the llama file type named after the type holding most bytes
FILE_TYPE_OF = {"Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q8_0": "Q8_0",
                "Q2_K": "Q2_K", "Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q6_K": "Q6_K"}
