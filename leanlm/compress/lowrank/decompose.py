"""Replace a model's linear layers by low-rank factors under a global parameter budget.

``decompose_model`` is the orchestration around ``svd.py`` (math), ``whitening.py`` (statistics) and
``budget.py`` (ranks): collect Cholesky factors if whitening, score every matrix's singular values,
allocate ranks, then factorise each layer and swap in a ``LowRankLinear`` (int8) or a
``TrainableLowRankLinear`` (float, for recipes that train or quantise further).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from .budget import DENSE, MatrixBudget, allocate_ranks, target_params, total_kept
from .config import LowRankConfig, Method
from .modules import LowRankLinear, TrainableLowRankLinear
from .svd import decompose, factors_from_svd
from .targets import replace_module, target_names
from .whitening import collect_cholesky

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecomposeReport:
    ranks: dict[str, int]          # DENSE (-1) for matrices kept dense
    shapes: dict[str, tuple[int, int]]
    target_dense_params: int       # parameters of the targeted linears before
    target_budget: int             # parameters they may keep
    target_kept: int               # parameters they keep
    model_params_before: int
    model_params_after: int
    output_error: dict[str, float]  # relative calibration (whitened) or weight (plain) error per matrix

    def summary(self) -> dict:
        removed = self.target_dense_params - self.target_kept
        return {"target_params_before": self.target_dense_params, "target_params_after": self.target_kept,
                "target_budget": self.target_budget, "removed_fraction_of_targets": removed / self.target_dense_params,
                "model_params_before": self.model_params_before, "model_params_after": self.model_params_after,
                "removed_fraction_of_model": 1 - self.model_params_after / self.model_params_before,
                "matrices": len(self.ranks), "dense_kept": sum(r == DENSE for r in self.ranks.values())}


def count_params(model: nn.Module) -> int:
    """Parameters of a model, counting a low-rank layer's factor entries (int8 codes) as parameters."""
    n = sum(p.numel() for p in model.parameters())
    return n + sum(m.a_codes.numel() + m.b_codes.numel() for m in model.modules() if isinstance(m, LowRankLinear))


@torch.no_grad()
def decompose_model(model: nn.Module, cfg: LowRankConfig, calib_ids: torch.Tensor | None = None,
                    trainable: bool = False, chols: dict[str, torch.Tensor] | None = None) -> DecomposeReport:
    """Decompose ``model`` in place; ``calib_ids`` (N, T) are needed for ``Method.WHITENED`` unless
    ``chols`` (from ``whitening.collect_cholesky``, reusable across budgets) are given."""
    before = count_params(model)
    names = target_names(model, cfg.include)
    if not names:
        raise ValueError(f"no linear layer matches include={cfg.include}")
    if cfg.method == Method.SVD:
        chols = {n: None for n in names}
    elif chols is None:
        if calib_ids is None:
            raise ValueError("whitened SVD needs calibration ids")
        chols = collect_cholesky(model, calib_ids, names, cfg.batch_size, cfg.damping)
    weights = {n: model.get_submodule(n).weight.detach() for n in names}
    svds = {}
    for n in names:  # (U, S, Vh) kept in float32 between scoring and factorising
        u, s, vh = decompose(weights[n], chols[n])
        svds[n] = (u.float(), s, vh.float())
    mats = [MatrixBudget(n, *weights[n].shape, svds[n][1] ** 2) for n in names]
    dense_total = sum(m.dense_params for m in mats)
    budget = target_params(dense_total, cfg.remove)
    ranks = allocate_ranks(mats, budget, cfg.allocation, cfg.allow_dense)
    errors = {}
    for m in mats:
        r = ranks[m.name]
        errors[m.name] = 0.0 if r == DENSE else float(m.gains[r:].sum() / m.gains.sum().clamp_min(1e-30))
        if r == DENSE:
            continue
        layer = model.get_submodule(m.name)
        w = weights[m.name]
        a, b = factors_from_svd(*svds.pop(m.name), r, chols[m.name])
        bias = None if layer.bias is None else layer.bias.detach()
        new = (TrainableLowRankLinear(a, b, bias) if trainable
               else LowRankLinear.from_factors(a, b, bias, dtype=w.dtype))
        replace_module(model, m.name, new.to(w.device))
    report = DecomposeReport(ranks, {m.name: (m.out_features, m.in_features) for m in mats}, dense_total, budget,
                             total_kept(mats, ranks), before, count_params(model), errors)
    log.info("decomposed %d linears: kept %d of %d parameters (budget %d)", len(mats), report.target_kept,
             dense_total, budget)
    return report
