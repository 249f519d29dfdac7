"""Integer-factor storage of the token embedding: int8 rows, (whitened) low-rank SVD, or tensor train.

The table ``E (V, d)`` is tied to the output head in SmolLM2, so every choice rebuilds the whole table
once at load (disk bytes shrink, memory does not). ``WHITENED_SVD`` weighs the error by the covariance
``C = H^T H`` of the head's inputs (final hidden states), i.e. minimises the logit error ``||(E - E') H^T||``
the way SVD-LLM does for linear layers.
"""
from __future__ import annotations

import enum

import torch
from torch import nn

from .budget import target_params
from .intq import dequantize_rows, quantize_rows
from .svd import break_even_rank, cholesky_of_covariance, svd_factors, whitened_svd_factors


class EmbedMethod(str, enum.Enum):
    BF16 = "bf16"                  # leave it as it is
    INT8 = "int8"                  # int8 rows with per-row scales (full rank: quantisation, not decomposition)
    INT8_G32 = "int8-g32"          # int8 with one scale per 32 entries (GGUF Q8_0's layout; full rank)
    SVD = "svd"                    # rank-r int8 factors, plain SVD
    WHITENED_SVD = "whitened-svd"  # rank-r int8 factors, SVD of E L with L = chol(cov of head inputs)


def embedding_rank(rows: int, dim: int, remove: float) -> int:
    """Largest rank whose factors keep at most ``(1 - remove)`` of the table's parameters."""
    return max(1, min(break_even_rank(rows, dim), target_params(rows * dim, remove) // (rows + dim)))


@torch.no_grad()
def head_input_cholesky(model: nn.Module, calib_ids: torch.Tensor, batch_size: int = 8,
                        damping: float = 1e-3) -> torch.Tensor:
    """Cholesky factor of the covariance of the output head's inputs over the calibration windows."""
    head = model.get_output_embeddings()
    acc: list[torch.Tensor] = []

    def add(_m, args):
        x = args[0].reshape(-1, args[0].shape[-1]).float()
        c = (x.T @ x).double()
        acc[:] = [acc[0] + c] if acc else [c]
    handle = head.register_forward_pre_hook(add)
    try:
        for i in range(0, calib_ids.shape[0], batch_size):
            model(input_ids=calib_ids[i:i + batch_size], use_cache=False, logits_to_keep=0)
    finally:
        handle.remove()
    return cholesky_of_covariance(acc[0], damping)


def compress_table(table: torch.Tensor, method: EmbedMethod, remove: float,
                   chol: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Integer tensors that store ``table`` (``(V, d)``): ``{"codes", "scale"}`` or ``{"a_codes", ...}``."""
    if method in (EmbedMethod.INT8, EmbedMethod.INT8_G32):
        codes, scale = quantize_rows(table, group=32 if method == EmbedMethod.INT8_G32 else 0)
        return {"codes": codes, "scale": scale}
    rank = embedding_rank(*table.shape, remove)
    if method == EmbedMethod.WHITENED_SVD:
        if chol is None:
            raise ValueError("whitened-svd embedding needs the head-input Cholesky factor")
        a, b = whitened_svd_factors(table, chol, rank)
    elif method == EmbedMethod.SVD:
        a, b = svd_factors(table, rank)
    else:
        raise ValueError(f"embedding method {method.value} stores no integer tensors")
    (ac, as_), (bc, bs) = quantize_rows(a), quantize_rows(b)
    return {"a_codes": ac, "a_scale": as_, "b_codes": bc, "b_scale": bs}


def rebuild_table(t: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    if "codes" in t:
        return dequantize_rows(t["codes"], t["scale"], dtype)
    return (dequantize_rows(t["a_codes"], t["a_scale"]) @ dequantize_rows(t["b_codes"], t["b_scale"])).to(dtype)


def stored_params(t: dict[str, torch.Tensor]) -> int:
    """Integer entries stored (scales not counted)."""
    return sum(v.numel() for k, v in t.items() if k.endswith("codes"))
