"""Input covariances of linear layers, collected decoder block by decoder block with forward hooks.

The calibration batches run through the embedding once; their inputs to the first decoder block are
caught by a pre-hook (the forward stops there). Then each block runs alone on the cached hidden states
with hooks on its linears, which add ``X^T X`` (float32 per batch, summed in float64) for each group
of linears sharing an input; the block's outputs become the next block's inputs. Peak memory is the
cached hidden states plus one block's covariances, whatever the depth of the model.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .svd import cholesky_of_covariance
from .targets import arch_of, decoder_layers

log = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by the pre-hook on the first block once its inputs are caught."""


@torch.no_grad()
def _first_block_inputs(model: nn.Module, calib_ids: torch.Tensor, batch_size: int) -> list[tuple[tuple, dict]]:
    caught: list[tuple[tuple, dict]] = []

    def grab(_module, args, kwargs):
        caught.append((args, kwargs))
        raise _StopForward

    first = decoder_layers(model)[0]
    handle = first.register_forward_pre_hook(grab, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for i in range(0, calib_ids.shape[0], batch_size):
            try:
                model(input_ids=calib_ids[i:i + batch_size].to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return caught


@torch.no_grad()
def collect_cholesky(model: nn.Module, calib_ids: torch.Tensor, names: list[str], batch_size: int = 8,
                     damping: float = 1e-3) -> dict[str, torch.Tensor]:
    """Lower Cholesky factor (float32, ``(in, in)``) of the input covariance of each linear in ``names``."""
    arch, layers = arch_of(model), decoder_layers(model)
    wanted = set(names)
    inputs = _first_block_inputs(model, calib_ids, batch_size)
    out: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(layers):
        prefix = f"{arch.layers}.{i}."
        groups = [g for g in arch.groups if any(prefix + rel in wanted for rel in g)]
        covs: dict[str, torch.Tensor] = {}
        handles = [_hook_group(layer.get_submodule(g[0]), g[0], covs) for g in groups]
        try:
            inputs = _run_block(layer, inputs)
        finally:
            for h in handles:
                h.remove()
        for g in groups:
            chol = cholesky_of_covariance(covs[g[0]], damping).float()
            for rel in g:
                if prefix + rel in wanted:
                    out[prefix + rel] = chol
        log.debug("block %d: covariances of %d input groups", i, len(groups))
    return out


def _hook_group(module: nn.Module, key: str, covs: dict[str, torch.Tensor]):
    def add(_m, args):
        x = args[0].reshape(-1, args[0].shape[-1]).float()          # (tokens, in)
        c = (x.T @ x).double()
        covs[key] = covs[key] + c if key in covs else c
    return module.register_forward_pre_hook(add)


def _block_output(out):
    return out[0] if isinstance(out, tuple) else out


def _run_block(layer: nn.Module, inputs: list[tuple[tuple, dict]]) -> list[tuple[tuple, dict]]:
    """Run one block on every cached batch; return the batches with their hidden states advanced."""
    nxt = []
    for args, kwargs in inputs:
        if args:
            hidden = _block_output(layer(*args, **kwargs))
            nxt.append(((hidden, *args[1:]), kwargs))
        else:
            kw = dict(kwargs)
            kw["hidden_states"] = _block_output(layer(**kwargs))
            nxt.append(((), kw))
    return nxt
