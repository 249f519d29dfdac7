"""On-the-fly decoding: weights stay entropy coded in memory and are decoded just before the module that
uses them runs (forward pre-hook), then freed (forward hook) - as DFloat11 does on GPU.

Which modules are decode units is data (``UNIT_PATTERNS``), not code: each decoder layer, the embedding and
the output head. A tied output head shares the embedding's parameter and is decoded again when it runs.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from . import codec
from .codec import Encoded

# Module names (regex, full match) whose parameters are decoded on the fly.
UNIT_PATTERNS: tuple[str, ...] = (r"(model\.)?embed_tokens", r"(model\.)?layers\.\d+", r"lm_head",
                                  r"(model\.)?decoder\.layers\.\d+", r"transformer\.h\.\d+")

# safetensors dtype string -> torch dtype (every dtype a container may hold).
TORCH_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
                "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "BOOL": torch.bool,
                "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "U16": torch.uint16, "I32": torch.int32,
                "U32": torch.uint32, "I64": torch.int64, "U64": torch.uint64}


@dataclass
class CodedTensor:
    enc: Encoded
    dtype: str          # stored safetensors dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return self.enc.nbytes

    @property
    def slot_bytes(self) -> int:
        """Decoded bytes, rounded up to 64 (its place in the decode arena)."""
        return (math.prod(self.shape) * TORCH_DTYPES[self.dtype].itemsize + 63) // 64 * 64


def unit_modules(model: torch.nn.Module):
    """(name, module) of every decode unit of ``model``."""
    return [(n, m) for n, m in model.named_modules() if any(re.fullmatch(p, n) for p in UNIT_PATTERNS)]


def unit_parameter_names(model: torch.nn.Module) -> set[str]:
    """Full names of the parameters inside decode units (what stays coded in memory)."""
    return {f"{n}.{p}" for n, m in unit_modules(model) for p, _ in m.named_parameters(remove_duplicate=False)}


class LazyWeights:
    """Holds coded weights for a model's decode units and materialises them around each unit's forward."""

    def __init__(self, model: torch.nn.Module, coded: dict[str, CodedTensor], dtype: torch.dtype, threads: int = 1):
        self.dtype, self.threads = dtype, threads
        self.coded = coded
        self._arena: torch.Tensor | None = None   # allocated at the first forward
        self._open: set[str] = set()
        by_name = dict(model.named_parameters(remove_duplicate=False))
        owner = {id(by_name[n]): n for n in coded if n in by_name}   # parameter object -> coded tensor name
        self.units: dict[str, list[tuple[torch.nn.Parameter, str]]] = {}
        self.handles = []
        for mname, module in unit_modules(model):
            params = [(p, owner[id(p)]) for p in module.parameters() if id(p) in owner]
            if not params:
                continue
            self.units[mname] = params
            self.handles.append(module.register_forward_pre_hook(self._pre(mname)))
            self.handles.append(module.register_forward_hook(self._post(mname)))
        for params in self.units.values():
            for p, _ in params:
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        self._arena_bytes = max((sum(coded[n].slot_bytes for _, n in ps) for ps in self.units.values()), default=0)

    def _buffers(self, unit: str) -> list[torch.Tensor]:
        """Destination tensors for a unit's parameters: views of one arena the size of the largest unit,
        reused by every unit in turn (no allocation and no page faults per forward; memory bounded by one
        unit). A unit that opens while another is still open (nested) gets fresh tensors instead."""
        coded = [self.coded[n] for _, n in self.units[unit]]
        if self._open:
            return [torch.empty(c.shape, dtype=TORCH_DTYPES[c.dtype]) for c in coded]
        if self._arena is None:
            self._arena = torch.empty(self._arena_bytes, dtype=torch.uint8)
        out, at = [], 0
        for c in coded:
            nbytes = math.prod(c.shape) * TORCH_DTYPES[c.dtype].itemsize
            out.append(self._arena[at:at + nbytes].view(TORCH_DTYPES[c.dtype]).reshape(c.shape))
            at += c.slot_bytes
        return out

    def _pre(self, unit: str):
        def hook(module, args):
            params = self.units[unit]
            bufs = self._buffers(unit)
            self._open.add(unit)
            items = [(self.coded[n].enc, b.view(-1).view(torch.uint8).numpy().view(self.coded[n].enc.layout.uint))
                     for (_, n), b in zip(params, bufs)]
            codec.decode_many(items, threads=self.threads)
            for (p, _), b in zip(params, bufs):
                p.data = b.to(device=p.device, dtype=self.dtype)
        return hook

    def _post(self, unit: str):
        def hook(module, args, output):
            for p, _ in self.units[unit]:
                p.data = torch.empty(0, dtype=p.dtype, device=p.device)
            self._open.discard(unit)
        return hook

    def coded_bytes(self) -> int:
        managed = {name for params in self.units.values() for _, name in params}
        return sum(self.coded[n].nbytes for n in managed)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def keep_coded(enc: Encoded) -> Encoded:
    """Own copies of the planes (detached from the container file)."""
    return Encoded(np.array(enc.words), np.array(enc.index), np.array(enc.tables), enc.layout, enc.count, enc.config)
