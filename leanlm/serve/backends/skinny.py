"""Batched-decode matrix products on the CPU: ``nn.Linear`` forwards with 2-16 rows through ``skinny.c``.

A decode step of a batch of B sequences multiplies each weight matrix by B rows. PyTorch's BLAS is built
for large blocks and reaches about half the arithmetic rate of this kernel at those sizes on one core
(``benchmarks/serve_probe.py`` times both), so batched steps cost far more than reading the weights once.
``patch(model)`` routes the fp32 ``nn.Linear`` layers of a model through the kernel when a call has
``MIN_ROWS..MAX_ROWS`` rows (one row, long prefills, other dtypes and autograd stay on PyTorch). Each output
is a dot product summed in the same order whatever the batch, so a row's logits do not depend on what it
is batched with (PyTorch's BLAS changes its blocking with the batch size).

Built on first use with the system C compiler (``leanlm.cbuild``); without a compiler, without AVX2+FMA,
or with ``LEANLM_NO_SKINNY=1``, ``available()`` is False and nothing is patched.
"""
from __future__ import annotations

import ctypes
import logging
import os
from functools import lru_cache
from pathlib import Path

import torch

from ... import cbuild

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("skinny.c")
FLAGS = ("-O3", "-std=gnu11", "-shared", "-fPIC")
ABI_VERSION = 2
MIN_ROWS, MAX_ROWS = 2, 16


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(str(cbuild.build_library(SOURCE, FLAGS, cbuild.compiler())))
    except (cbuild.BuildError, OSError) as e:
        log.warning("skinny matrix kernel unavailable (%s); batched decode uses PyTorch's", e)
        return None
    lib.sk_abi_version.restype = ctypes.c_int
    lib.sk_cpu_ok.restype = ctypes.c_int
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.sk_linear.argtypes = [p, i64, p, p, p, i64, i64, i64, i64]
    lib.sk_linear.restype = ctypes.c_int
    if lib.sk_abi_version() != ABI_VERSION or not lib.sk_cpu_ok():
        log.info("skinny matrix kernel not used (ABI %d, AVX2+FMA %s)", lib.sk_abi_version(), bool(lib.sk_cpu_ok()))
        return None
    return lib


def available() -> bool:
    return os.environ.get("LEANLM_NO_SKINNY", "") in ("", "0") and _library() is not None


_F32 = torch.float32


def _product(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The kernel call: fp32 CPU ``x`` (..., K), contiguous ``w`` (N, K) and ``bias`` (N,), already checked."""
    k, n = w.shape[1], w.shape[0]
    x2 = x.reshape(-1, k)
    if x2.stride(1) != 1 or x2.stride(0) < k:       # broadcast rows (stride 0) or a transposed view: copy
        x2 = x2.contiguous()
    y = torch.empty((x2.shape[0], n), dtype=_F32)
    if _library().sk_linear(x2.data_ptr(), x2.stride(0), w.data_ptr(), bias.data_ptr() if bias is not None else None,
                            y.data_ptr(), n, x2.shape[0], n, k) != 0:
        raise ValueError(f"skinny kernel refused x {tuple(x2.shape)} weight {tuple(w.shape)}")
    return y.view(*x.shape[:-1], n)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for fp32 CPU tensors through the kernel (any number of rows)."""
    if _library() is None:
        raise RuntimeError("the skinny matrix kernel is not available on this machine")
    if x.dtype != _F32 or weight.dtype != _F32 or x.device.type != "cpu":
        raise TypeError(f"skinny.linear takes fp32 CPU tensors, not {x.dtype} / {weight.dtype} on {x.device}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"input has {x.shape[-1]} features, the weight takes {weight.shape[1]}")
    if bias is not None:
        bias = bias if bias.is_contiguous() and bias.dtype == _F32 else bias.float().contiguous()
    return _product(x, weight.contiguous(), bias)


def _forward(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The patched ``forward``: decode-sized fp32 calls straight to the kernel (this path is ~200 calls a
    SmolLM2 step, so it does only the checks that decide it), everything else to ``F.linear``."""
    w, bias = module.weight, module.bias
    k = x.shape[-1]
    rows = x.numel() // k if k else 0
    if (rows < MIN_ROWS or rows > MAX_ROWS or x.dtype is not _F32 or w.dtype is not _F32 or x.device.type != "cpu"
            or not w.is_contiguous() or w.shape[1] != k
            or (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
            or (bias is not None and (bias.dtype is not _F32 or not bias.is_contiguous()))):
        return torch.nn.functional.linear(x, w, bias)
    return _product(x, w, bias)


def patch(model: torch.nn.Module) -> int:
    """Route ``model``'s fp32 ``nn.Linear`` layers through the kernel for batched-decode sizes; returns how
    many were patched (0 when the kernel is unavailable). Other modules (int8, LoRA wrappers' own code) are
    left alone; a LoRA's base ``nn.Linear`` inside them is patched like any other."""
    if not available():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype == torch.float32:
            module.forward = _forward.__get__(module)
            count += 1
    return count


def unpatch(model: torch.nn.Module) -> int:
    """Undo ``patch``: every layer back on ``F.linear``; returns how many were patched."""
    count = 0
    for module in model.modules():
        if module.__dict__.get("forward") is not None and getattr(module.forward, "__func__", None) is _forward:
            del module.forward
            count += 1
    return count
