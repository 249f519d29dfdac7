"""Memory: bytes of weights on disk, bytes held in memory, peak RSS."""
from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt")


def disk_bytes(path: str | Path | None) -> int | None:
    """Bytes of weight files in a model directory (or one file); None for models built in memory."""
    if path is None:
        return None
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES)


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    return (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())


def _leaf_tensors(t: torch.Tensor):
    """Plain tensors inside a tensor subclass (torchao's quantised tensors keep packed data inside)."""
    flatten = getattr(t, "__tensor_flatten__", None)
    if flatten is None or type(t) in (torch.Tensor, torch.nn.Parameter):
        yield t
        return
    names, _ = flatten()
    for n in names:
        yield from _leaf_tensors(getattr(t, n))


def memory_bytes(model: torch.nn.Module) -> int:
    """Bytes of all parameters and buffers held by ``model``; shared storages (tied weights) count once."""
    seen: dict[tuple[int, int], int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        for leaf in _leaf_tensors(t.data if isinstance(t, torch.nn.Parameter) else t):
            if leaf.device.type == "meta":
                continue
            seen[_storage_key(leaf)] = leaf.untyped_storage().nbytes()
    return sum(seen.values())


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
