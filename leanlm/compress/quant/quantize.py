"""``quantize_model``: calibrate (SmoothQuant / AWQ), then swap every block linear for an integer module.

Orchestration only: the math is in ``primitives``, ``scaling``, ``smoothquant`` and ``awq``; which norm
feeds which linear comes from ``leanlm.models.arch``; the block walk from ``calibrate``.
"""
from __future__ import annotations

import copy
import logging
import time

import torch
from torch import nn

from ...models.arch import ArchSpec, ScaleGroup, arch_for, decoder_layers
from . import awq, smoothquant
from .calibrate import for_each_block, record_linear_inputs
from .config import Method, QuantConfig
from .modules import QUANT_MODULES, Int4Linear, Int8BlockLinear
from .primitives import fake_quantize_int4, fake_quantize_int8
from .scaling import fold_into_norm, fold_into_producer_rows, scale_input_columns

log = logging.getLogger(__name__)


def model_dtype(model: nn.Module) -> torch.dtype:
    return model.get_input_embeddings().weight.dtype


def group_applies(block: nn.Module, group: ScaleGroup) -> bool:
    """A linear->linear pair is foldable only when the producer's outputs are exactly the consumer's
    inputs (not so for v->o under grouped-query attention, where each v head feeds several o heads)."""
    if group.prev_is_norm:
        return True
    prev = block.get_submodule(group.prev)
    return all(prev.out_features == block.get_submodule(n).in_features for n in group.linears)


@torch.no_grad()
def apply_scale(block: nn.Module, group: ScaleGroup, s: torch.Tensor, arch: ArchSpec) -> None:
    """Fold ``s`` between ``group.prev`` and ``group.linears`` (function-preserving)."""
    prev = block.get_submodule(group.prev)
    if group.prev_is_norm:
        prev.weight.copy_(fold_into_norm(prev.weight, s, arch.norm_offset))
    else:
        w, b = fold_into_producer_rows(prev.weight, prev.bias, s)
        prev.weight.copy_(w)
        if b is not None:
            prev.bias.copy_(b)
    for name in group.linears:
        lin = block.get_submodule(name)
        lin.weight.copy_(scale_input_columns(lin.weight, s))


def _groups(block: nn.Module, arch: ArchSpec, linear_pairs: bool) -> list[ScaleGroup]:
    return [g for g in arch.groups if (linear_pairs or g.prev_is_norm) and group_applies(block, g)]


# ------------------------------------------------------------------------------ SmoothQuant
def collect_absmax(model: nn.Module, arch: ArchSpec, ids: torch.Tensor,
                   cfg: QuantConfig) -> list[dict[str, torch.Tensor]]:
    """Per block, per scale group: max |x_j| of the group's input over the calibration tokens."""
    stats: list[dict[str, torch.Tensor]] = []

    def fn(_i, block, inputs):
        groups = _groups(block, arch, cfg.smooth_linear_pairs)
        xs, outputs = record_linear_inputs(block, [g.linears[0] for g in groups], inputs)
        stats.append({g.prev: smoothquant.channel_absmax(xs[g.linears[0]]) for g in groups})
        return outputs

    for_each_block(model, arch, ids, cfg.calib_batch, fn)
    return stats


@torch.no_grad()
def smooth(model: nn.Module, arch: ArchSpec, stats: list[dict[str, torch.Tensor]], alpha: float) -> None:
    for block, block_stats in zip(decoder_layers(model, arch), stats):
        for g in arch.groups:
            if g.prev in block_stats:
                weights = [block.get_submodule(n).weight for n in g.linears]
                apply_scale(block, g, smoothquant.smoothing_scales(block_stats[g.prev], weights, alpha), arch)


@torch.no_grad()
def calibration_nll(model: nn.Module, ids: torch.Tensor, batch: int) -> float:
    total, count = 0.0, 0
    for start in range(0, ids.shape[0], batch):
        x = ids[start:start + batch]
        logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                reduction="sum")
        total, count = total + float(nll), count + x[:, 1:].numel()
    return total / count


def smoothquant_pass(model: nn.Module, arch: ArchSpec, cfg: QuantConfig, ids: torch.Tensor) -> dict:
    """Choose alpha on held-back calibration windows (W8A8 NLL), then smooth ``model`` with it."""
    n_score = min(cfg.alpha_eval_n, max(1, ids.shape[0] // 2))
    score_ids, stat_ids = ids[:n_score], ids[n_score:]
    stats = collect_absmax(model, arch, stat_ids, cfg)
    scores: dict[float, float] = {}
    if len(cfg.alpha_grid) > 1:
        for alpha in cfg.alpha_grid:
            trial = copy.deepcopy(model)
            smooth(trial, arch, stats, alpha)
            replace_linears(trial, arch, "w8a8")
            scores[alpha] = calibration_nll(trial, score_ids, cfg.calib_batch)
            log.info("smoothquant alpha=%.2f calibration nll %.4f", alpha, scores[alpha])
            del trial
    alpha = min(scores, key=scores.get) if scores else cfg.alpha_grid[0]
    smooth(model, arch, stats, alpha)
    return {"alpha": alpha, "alpha_scores": {str(a): round(v, 5) for a, v in scores.items()}}


# ------------------------------------------------------------------------------ AWQ
def inspect_forward(block: nn.Module, group: ScaleGroup, x: torch.Tensor):
    """``forward(candidate weights) -> output`` of ``group.inspect`` (e.g. the MLP) on ``x``, in float32."""
    module = block.get_submodule(group.inspect)
    base = {k: v.float() for k, v in module.named_parameters()}
    keys = [n.removeprefix(group.inspect + ".") + ".weight" for n in group.linears]

    def forward(ws: list[torch.Tensor]) -> torch.Tensor:
        return torch.func.functional_call(module, {**base, **dict(zip(keys, ws))}, (x,))

    return forward


def awq_pass(model: nn.Module, arch: ArchSpec, cfg: QuantConfig, ids: torch.Tensor) -> dict:
    """Search and fold AWQ scales block by block; returns clip ratios per linear and the chosen alphas."""
    dtype = model_dtype(model)
    gen = torch.Generator().manual_seed(cfg.seed)
    clips: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}

    int8 = cfg.method is Method.AWQ_INT8   # per-channel int8: the scale search only (no int4 clipping)

    def quant(w: torch.Tensor) -> torch.Tensor:
        if int8:
            return fake_quantize_int8(w, scale_dtype=dtype)
        return fake_quantize_int4(w, cfg.group_size, scale_dtype=dtype)

    def sample(x: torch.Tensor, n: int) -> torch.Tensor:
        return x if x.shape[0] <= n else x[torch.randperm(x.shape[0], generator=gen)[:n]]

    def fn(i, block, inputs):
        groups = _groups(block, arch, True)
        log.debug("awq block %d", i)
        xs, outputs = record_linear_inputs(block, [g.linears[0] for g in groups], inputs)
        prefix = f"{arch.layers}.{i}."
        for g in groups:
            x = sample(xs[g.linears[0]], cfg.awq_tokens)
            weights = [block.get_submodule(n).weight for n in g.linears]
            group = weights[0].shape[1] if int8 else cfg.group_size   # int8 scales are per whole row
            w_mean = awq.weight_channel_mean(weights, group) if cfg.awq_duo_scaling else None
            forward = inspect_forward(block, g, x) if g.inspect and cfg.awq_inspect else None
            s, alpha, _ = awq.search_scale(x, weights, quant, cfg.awq_grid, w_mean, forward)
            apply_scale(block, g, s, arch)
            alphas[prefix + g.prev] = alpha
            if int8 or not cfg.awq_clip:
                continue
            xc = sample(xs[g.linears[0]], cfg.clip_tokens) / s[None, :]
            for name in g.linears:
                if name not in arch.softmax_inputs:
                    w = block.get_submodule(name).weight
                    clips[prefix + name] = awq.search_clip(xc, w, cfg.group_size, cfg.clip_grid,
                                                           cfg.clip_max_shrink, dtype)
        return outputs   # the scaled block computes the same function: its float outputs are these

    for_each_block(model, arch, ids, cfg.calib_batch, fn)
    return {"clips": clips, "alphas": alphas}


# ------------------------------------------------------------------------------ module swap
def replace_linears(model: nn.Module, arch: ArchSpec, kind: str, group: int = 128,
                    clips: dict[str, torch.Tensor] | None = None,
                    codes: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> list[str]:
    """Swap every block linear named in ``arch.linears`` for the integer module ``kind``; returns names.
    ``codes`` (int8: ``{name: (q, scale)}``, from GPTQ) are used as given instead of rounding the weights."""
    dtype = model_dtype(model)
    names = []
    for i, block in enumerate(decoder_layers(model, arch)):
        for rel in arch.linears:
            full = f"{arch.layers}.{i}.{rel}"
            lin = block.get_submodule(rel)
            if not isinstance(lin, nn.Linear):
                raise TypeError(f"{full} is a {type(lin).__name__}, not an nn.Linear (already quantised?)")
            if kind == "int4":
                new = Int4Linear.from_float(lin, dtype, group, (clips or {}).get(full))
            elif kind == "int8-block":
                new = Int8BlockLinear.from_float(lin, dtype)
            elif codes is not None and full in codes:
                q, s = codes[full]
                bias = None if lin.bias is None else lin.bias.detach().to(dtype)
                new = QUANT_MODULES[kind](q, s.to(dtype), bias)
            else:
                new = QUANT_MODULES[kind].from_float(lin, dtype)
            block.set_submodule(rel, new)
            names.append(full)
    return names


def quantize_model(model: nn.Module, cfg: QuantConfig, calib_ids: torch.Tensor | None = None) -> nn.Module:
    """Quantise ``model`` in place per ``cfg`` and return it. Calibrated methods need ``calib_ids`` (n, T).

    The returned model carries ``model.leanlm_quant`` (config and calibration results: chosen alpha, ...).
    """
    if cfg.calibrated and calib_ids is None:
        raise ValueError(f"method '{cfg.method.value}' calibrates: pass calib_ids "
                         f"(see leanlm.compress.calib)")
    arch = arch_for(model)
    t0 = time.perf_counter()
    info: dict = {}
    clips = codes = None
    if cfg.method is Method.GPTQ_INT8:
        from .gptq import gptq_pass
        codes = gptq_pass(model, arch, calib_ids, cfg.calib_batch, dtype=model_dtype(model), damp=cfg.gptq_damp)
    elif cfg.method is Method.SMOOTHQUANT:
        info.update(smoothquant_pass(model, arch, cfg, calib_ids))
    elif cfg.method in (Method.AWQ_W4, Method.AWQ_INT8):
        found = awq_pass(model, arch, cfg, calib_ids)
        clips = found["clips"] or None
        info["awq_alpha_mean"] = sum(found["alphas"].values()) / max(1, len(found["alphas"]))
    info["calibration_seconds"] = round(time.perf_counter() - t0, 2)
    names = replace_linears(model, arch, cfg.module_kind, cfg.group_size, clips, codes)
    info["quantized_modules"] = len(names)
    model.leanlm_quant = {"config": cfg, **info}
    log.info("quantised %d linears with %s in %.1fs", len(names), cfg.method.value, time.perf_counter() - t0)
    return model
