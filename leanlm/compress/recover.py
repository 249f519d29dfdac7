"""Recovery training: a short fine-tune on the calibration corpus after aggressive compression.

Quantisation-aware training (QAT): every low-rank layer becomes a ``TrainableLowRankLinear`` whose float
factors are rounded to the int8 grid in the forward pass with straight-through gradients, so what is
trained is what will be stored; afterwards the factors are quantised to int8 again. Linears at the
decomposed positions that stayed dense are trained as they are; embeddings, norms and everything else
are frozen. The loss is next-token cross-entropy on windows of the corpus's ``calib`` half (never the
``eval`` half that perplexity reads). The same routine on an uncompressed model is the control that
separates winning back what compression lost from adapting to the corpus's domain.
"""
from __future__ import annotations

import enum
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..config import require
from .lowrank.modules import LowRankLinear, TrainableLowRankLinear
from .lowrank.targets import replace_module, target_names

log = logging.getLogger(__name__)


class Finish(str, enum.Enum):
    INT8 = "int8"            # quantise the factors back into LowRankLinear (the leanlm.lowrank format)
    TRAINABLE = "trainable"  # leave float factors (a pipeline that quantises next takes them)


@dataclass(frozen=True)
class RecoveryConfig:
    steps: int = field(default=60, metadata={"help": "optimizer steps"})
    lr: float = field(default=5e-5, metadata={"help": "peak learning rate (AdamW, warm-up then cosine)"})
    batch_size: int = field(default=4, metadata={"help": "sequences per step"})
    seq_len: int = field(default=256, metadata={"help": "tokens per training sequence"})
    warmup: int = field(default=5, metadata={"help": "linear warm-up steps"})
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    fake_quant: bool = field(default=True, metadata={"help": "round factors to int8 in the forward (QAT)"})
    seed: int = field(default=1, metadata={"help": "seed of the training windows (calibration uses 0)"})
    finish: Finish = Finish.INT8

    def __post_init__(self) -> None:
        require(self.steps >= 1 and self.batch_size >= 1 and self.seq_len >= 2, "steps, batch_size, seq_len >= 1")
        require(self.lr > 0 and 0 <= self.warmup <= self.steps, "lr > 0 and 0 <= warmup <= steps")


class _StraightThrough(nn.Module):
    """Parametrization: the weight as ``fake(w)`` in the forward, identity gradient (STE)."""

    def __init__(self, fake: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fake = fake

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (self.fake(w.detach()) - w).detach()


def _prepare(model: nn.Module, fake_quant: bool, weight_fake_quant: Callable | None = None) -> list[nn.Parameter]:
    """Swap int8 layers for trainable ones and return the parameters to train (all others frozen)."""
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    for name in target_names(model):
        m = model.get_submodule(name)
        if isinstance(m, LowRankLinear):
            m = TrainableLowRankLinear.from_int8(m, fake_quant)
            replace_module(model, name, m)
        if isinstance(m, TrainableLowRankLinear):
            m.fake_quant = fake_quant
            m.a.requires_grad_(True)
            m.b.requires_grad_(True)
            params += [m.a, m.b]
        elif isinstance(m, nn.Linear) and m.weight.is_floating_point():
            m.weight.requires_grad_(True)
            params.append(m.weight)
            if weight_fake_quant is not None:
                parametrize.register_parametrization(m, "weight", _StraightThrough(weight_fake_quant))
    if not params:
        raise ValueError("recovery found nothing to train at the decomposable positions")
    return params


def _finish(model: nn.Module, finish: Finish, dtype: torch.dtype) -> None:
    for name in target_names(model):
        m = model.get_submodule(name)
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)  # keep trained float w
        if isinstance(m, TrainableLowRankLinear) and finish == Finish.INT8:
            replace_module(model, name, m.to_int8(dtype))
    for p in model.parameters():
        p.requires_grad_(False)


def _lr_at(step: int, cfg: RecoveryConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * frac))


def recover(model: nn.Module, tok, cfg: RecoveryConfig = RecoveryConfig(), train_ids: torch.Tensor | None = None,
            weight_fake_quant: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Fine-tune ``model`` in place; returns per-step losses, seconds and what was trained.

    ``weight_fake_quant`` (e.g. INT4 quantise-dequantise) is applied with straight-through gradients to
    the dense linears being trained, for QAT ahead of a quantiser that runs afterwards."""
    from .calib import calibration_ids

    if train_ids is None:
        train_ids = calibration_ids(tok, cfg.steps * cfg.batch_size, cfg.seq_len, cfg.seed)
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    params = _prepare(model, cfg.fake_quant, weight_fake_quant)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    device = params[0].device
    losses, t0 = [], time.perf_counter()
    model.train()
    torch.manual_seed(cfg.seed)
    try:
        for step in range(cfg.steps):
            idx = [(step * cfg.batch_size + i) % train_ids.shape[0] for i in range(cfg.batch_size)]
            x = train_ids[idx].to(device)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, cfg)
            loss = model(input_ids=x, labels=x, use_cache=False).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            losses.append(round(float(loss), 5))
            log.info("recovery step %d/%d loss %.4f", step + 1, cfg.steps, losses[-1])
    finally:
        model.eval()
        _finish(model, cfg.finish, dtype)
    return {"steps": cfg.steps, "tokens": cfg.steps * cfg.batch_size * cfg.seq_len, "losses": losses,
            "trained_params": sum(p.numel() for p in params), "seconds": round(time.perf_counter() - t0, 1)}
