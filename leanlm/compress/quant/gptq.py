"""GPTQ for per-channel int8 weights (Frantar et al. 2022): ``Method.GPTQ_INT8``.

Round-to-nearest int8 per output channel leaves each weight's rounding error where it falls. GPTQ rounds
the input columns one at a time and spreads each column's error over the columns not yet rounded, in
proportion to the inverse Hessian ``H = X^T X`` of the layer's calibration inputs, so the layer's *output*
error on that text is what is minimised. The scale of each row stays the round-to-nearest one
(``absmax / 127``, representable in the model dtype); the codes and the module (``Int8Linear``, the
same integer kernel and checkpoint format as ``Method.INT8``) do not change, only which code each weight
gets.

Calibration is sequential (``calibrate.for_each_block``): each block's linears see the inputs the
already-quantised earlier blocks produce, as GPTQ's reference implementation and llm-compressor do.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from ...models.arch import ArchSpec
from .calibrate import BlockInput, for_each_block, record_linear_inputs
from .primitives import INT8_MAX, _round_to

log = logging.getLogger(__name__)


def hessian_inverse_factor(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) I)^-1`` (float64 solve, float32 out); inputs
    that never fire (zero diagonal) get a unit diagonal so their columns are simply rounded."""
    H = H.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H.diagonal().add_(damp * float(torch.diag(H).mean()))
    L = torch.linalg.cholesky(H)
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True).float()


def gptq_int8(W: torch.Tensor, H: torch.Tensor, scale_dtype: torch.dtype = torch.float32,
              damp: float = 0.01, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) weights and their inputs' (K, K) second moment -> (int8 codes (N, K), scale (N,) float32)."""
    W = W.float().clone()
    scale = _round_to(W.abs().amax(dim=1).clamp(min=1e-8) / INT8_MAX, scale_dtype)
    hinv = hessian_inverse_factor(H, damp)
    K = W.shape[1]
    Q = torch.empty_like(W, dtype=torch.int8)
    for i1 in range(0, K, block):
        i2 = min(i1 + block, K)
        W1, h1 = W[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err = torch.zeros_like(W1)
        for j in range(i2 - i1):
            w = W1[:, j]
            q = torch.round(w / scale).clamp(-INT8_MAX, INT8_MAX)
            Q[:, i1 + j] = q.to(torch.int8)
            e = (w - q * scale) / h1[j, j]
            W1[:, j:] -= e[:, None] * h1[j, j:][None, :]
            err[:, j] = e
        W[:, i2:] -= err @ hinv[i1:i2, i2:]
    return Q, scale


def gptq_pass(model: nn.Module, arch: ArchSpec, ids: torch.Tensor, batch: int, dtype: torch.dtype,
              damp: float = 0.01) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Codes and scales of every block linear (``{full name: (q, scale)}``); each block's weights are
    replaced by their dequantised codes before its outputs feed the next block."""
    codes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def fn(i: int, blk: nn.Module, inputs: list[BlockInput]):
        xs, _ = record_linear_inputs(blk, list(arch.linears), inputs)
        for rel in arch.linears:
            lin = blk.get_submodule(rel)
            x = xs[rel]
            H = x.T @ x / max(1, x.shape[0])
            q, s = gptq_int8(lin.weight.detach(), H, scale_dtype=dtype, damp=damp)
            codes[f"{arch.layers}.{i}.{rel}"] = (q, s)
            lin.weight.copy_((q.float() * s[:, None]).to(lin.weight.dtype))
        return None                      # the driver runs the block again, with the rounded weights

    for_each_block(model, arch, ids, batch, fn)
    return codes
