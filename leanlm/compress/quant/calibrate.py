"""Layer-wise calibration driver (as llm-compressor's sequential pipeline): bounded memory.

Capture the inputs of the first decoder block for all calibration batches (the rest of the model never
runs on them), then walk the blocks one at a time: a callback inspects / transforms block ``i`` using its
inputs, and the block's outputs become block ``i+1``'s inputs. At any time only one block's
activations (and the linear inputs the callback asks for) are held.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ...models.arch import ArchSpec, decoder_layers

log = logging.getLogger(__name__)


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass after the first block's inputs are seen."""


@dataclass
class BlockInput:
    hidden: torch.Tensor      # (B, T, C) in the model dtype
    kwargs: dict              # attention mask, position embeddings, ... as the model passed them


@torch.no_grad()
def capture_block_inputs(model: nn.Module, arch: ArchSpec, ids: torch.Tensor, batch: int) -> list[BlockInput]:
    first = decoder_layers(model, arch)[0]
    seen: list[BlockInput] = []

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        seen.append(BlockInput(hidden.detach(), {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _Captured

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, ids.shape[0], batch):
            try:
                model(input_ids=ids[start:start + batch], use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return seen


@torch.no_grad()
def run_block(block: nn.Module, inputs: list[BlockInput]) -> list[BlockInput]:
    out = []
    for inp in inputs:
        h = block(inp.hidden, **inp.kwargs)
        out.append(BlockInput(h[0] if isinstance(h, tuple) else h, inp.kwargs))
    return out


@torch.no_grad()
def record_linear_inputs(block: nn.Module, names: list[str],
                         inputs: list[BlockInput]) -> tuple[dict[str, torch.Tensor], list[BlockInput]]:
    """Run ``block`` on ``inputs``; return each named linear's input, flattened to (tokens, K) float32,
    and the block's outputs (the next block's inputs, as they are before any transform of this block)."""
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    handles = []
    for name in names:
        def hook(_m, args, name=name):
            rows[name].append(args[0].reshape(-1, args[0].shape[-1]).float())
        handles.append(block.get_submodule(name).register_forward_pre_hook(hook))
    try:
        outputs = run_block(block, inputs)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(r) for n, r in rows.items()}, outputs


# fn(index, block, inputs) -> the block's outputs, or None to have the driver run the (transformed) block
BlockFn = Callable[[int, nn.Module, list[BlockInput]], "list[BlockInput] | None"]


@torch.no_grad()
def for_each_block(model: nn.Module, arch: ArchSpec, ids: torch.Tensor, batch: int, fn: BlockFn) -> None:
    """Call ``fn(index, block, inputs)`` for each decoder block in order. Block ``i+1`` gets what ``fn``
    returned (function-preserving transforms may hand back the outputs they computed before transforming,
    as llm-awq does, saving a forward pass), or else the outputs of block ``i`` run after ``fn``."""
    inputs = capture_block_inputs(model, arch, ids, batch)
    layers = decoder_layers(model, arch)
    for i, block in enumerate(layers):
        outputs = fn(i, block, inputs)
        if i + 1 < len(layers):
            inputs = outputs if outputs is not None else run_block(block, inputs)
        level = logging.INFO if (i + 1) % 10 == 0 else logging.DEBUG
        log.log(level, "calibrated block %d/%d", i + 1, len(layers))
