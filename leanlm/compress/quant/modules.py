"""Integer linear layers: integer weights in memory, real integer kernels in ``forward``.

* ``Int8Linear`` - int8 weights, per-channel scales; ``aten._weight_int8pack_mm`` (weight-only: the
  activations stay in the model dtype, the kernel converts weights on the fly).
* ``W8A8Linear`` - int8 weights and dynamic per-token int8 activations; ``torch._int_mm`` (int8 x int8
  -> int32 GEMM), then one rescale by (token scale x channel scale).
* ``Int4Linear`` - 4-bit codes packed two per byte in the CPU kernel's layout, group-wise bf16/fp32
  scale and zero; ``aten._weight_int4pack_mm_for_cpu``. The kernel needs K divisible by the group, so
  when it is not (SmolLM2: K=576, group 128) the codes are padded to the next multiple with zero
  columns and the activations with zeros (the padding contributes exactly nothing).
* ``Int8BlockLinear`` - int8 with one scale per block of 32 along K (Q8_0's grid). No CPU kernel of
  torch takes group-wise int8 scales, so the code ``q + 128 = 16 h + l`` is split into two 4-bit halves
  held as two ``Int4Linear`` s: ``q s = (h - 8) 16 s + (l - 8) s + 8 s``, i.e. the high half with scale
  ``16 s`` and zero 0, the low half with scale ``s`` and zero ``8 s`` - exact, two int4 kernel calls.

Weight-only kernels are GEMV-shaped: fast for decoding (a few rows), slower than the dense bf16 GEMM
for long prompts. So for inputs of more than ``dense_rows`` rows (prefill, perplexity) the int8 / int4
modules dequantise their weights into a transient dense matrix and call the dense GEMM; the integer
weights stay the only copy held in memory. ``dense_rows=0`` disables this (kernel only).

Each module serialises to a portable dict of tensors (``tensors()``) and back (``from_tensors``); the
checkpoint format lives in ``checkpoint.py``. Scales are kept in the model dtype, as the kernels want.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .primitives import (INT4_MID, INT8_BLOCK, n_groups, pack_int4, quantize_int4, quantize_int8,
                         quantize_int8_blocks, quantize_per_token, unpack_int4)


# Rows above which weight-only modules use dequantise + dense GEMM (see module doc). Measured crossovers on
# SmolLM2 prefill (2-core x86, under load): int8 dense matches bf16 from ~32 rows; int4 dequantisation costs
# more (nibble unpacking), so its kernel stays ahead up to ~128-256 rows.
DENSE_ROWS_INT8 = 32
DENSE_ROWS_INT4 = 256
DENSE_ROWS_INT8_BLOCK = 128   # its two int4 calls vs unpacking both halves: 1.4 vs 2.2 ms at 64 rows, 5.5 vs 3.1 at 256


def _flat(x: torch.Tensor, k: int) -> torch.Tensor:
    return x.reshape(-1, k)


def _owned(t: torch.Tensor) -> torch.Tensor:
    """A fresh, contiguous, allocator-aligned copy. Tensors read from a safetensors file can sit at any byte
    offset of the mapped file, and aten's int8 weight kernel segfaults on misaligned weights/scales
    (seen on tiny-llama: data_ptr % 64 == 56, crash at M >= 4 rows)."""
    return t.clone(memory_format=torch.contiguous_format)


def _add_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return y if bias is None else y + bias


class _QuantLinear(nn.Module):
    kind = ""

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("bias", bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind}"

    def _bias_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.bias is None else {"bias": self.bias}


class Int8Linear(_QuantLinear):
    """Weight-only int8, per output channel."""

    kind = "int8"

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                 dense_rows: int = DENSE_ROWS_INT8) -> None:
        super().__init__(qweight.shape[1], qweight.shape[0], bias)
        self.dense_rows = dense_rows
        self.register_buffer("qweight", _owned(qweight.to(torch.int8)))   # (N, K)
        self.register_buffer("scale", _owned(scale))                       # (N,) model dtype

    @classmethod
    def from_float(cls, linear: nn.Linear, dtype: torch.dtype) -> Int8Linear:
        q, s = quantize_int8(linear.weight.detach(), scale_dtype=dtype)
        return cls(q, s.to(dtype), None if linear.bias is None else linear.bias.detach().to(dtype))

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return self.qweight.to(dtype) * self.scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = _flat(x, self.in_features)
        if self.dense_rows and x2.shape[0] > self.dense_rows:
            y = F.linear(x2, self.dequantized(x.dtype))
        else:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scale)
        return _add_bias(y.view(*x.shape[:-1], self.out_features), self.bias)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"qweight": self.qweight, "scale": self.scale, **self._bias_dict()}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], dtype: torch.dtype, **_) -> Int8Linear:
        bias = t.get("bias")
        return cls(t["qweight"], t["scale"].to(dtype), None if bias is None else bias.to(dtype))


class W8A8Linear(_QuantLinear):
    """int8 weights (per channel) x int8 activations (per token, dynamic) -> int32, via ``torch._int_mm``."""

    kind = "w8a8"

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__(qweight.shape[1], qweight.shape[0], bias)
        self.register_buffer("qweight", _owned(qweight.to(torch.int8)))   # (N, K)
        self.register_buffer("scale", _owned(scale.float()))               # (N,) float32

    @classmethod
    def from_float(cls, linear: nn.Linear, dtype: torch.dtype) -> W8A8Linear:
        q, s = quantize_int8(linear.weight.detach())
        return cls(q, s, None if linear.bias is None else linear.bias.detach().to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, xs = quantize_per_token(_flat(x, self.in_features).float())
        acc = torch._int_mm(xq, self.qweight.t())                     # (M, N) int32
        y = (acc.float() * xs * self.scale).to(x.dtype)
        return _add_bias(y.view(*x.shape[:-1], self.out_features), self.bias)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"qweight": self.qweight, "scale": self.scale, **self._bias_dict()}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], dtype: torch.dtype, **_) -> W8A8Linear:
        bias = t.get("bias")
        return cls(t["qweight"], t["scale"].float(), None if bias is None else bias.to(dtype))


class Int4Linear(_QuantLinear):
    """Weight-only int4, asymmetric, group-wise along K; codes held in the CPU kernel's packed layout."""

    kind = "int4"

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int,
                 bias: torch.Tensor | None = None, dense_rows: int = DENSE_ROWS_INT4) -> None:
        n, k = codes.shape
        super().__init__(k, n, bias)
        self.group, self.dense_rows = group, dense_rows
        self.padded_in = n_groups(k, group) * group
        codes32 = F.pad(codes.to(torch.int32), (0, self.padded_in - k), value=INT4_MID)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes32, 1))
        # (G, N, 2): the kernel's layout, [..., 0] = scale, [..., 1] = zero
        self.register_buffer("scales_zeros", torch.stack([scale.t(), zero.t()], dim=-1).contiguous())
        # The packed layout is the kernel's business; where it is the one we know how to read (x86 builds:
        # blocks of 64 rows, byte j of column k = rows j | j+32 << 4), dense dequantisation reads it directly.
        unpacked = _unpack_cpu_int4(self.packed, n, self.padded_in)
        self.layout_known = n % 64 == 0 and torch.equal(unpacked.to(torch.int32), codes32)

    @classmethod
    def from_float(cls, linear: nn.Linear, dtype: torch.dtype, group: int = 128,
                   clip: torch.Tensor | None = None) -> Int4Linear:
        q, s, z = quantize_int4(linear.weight.detach(), group, clip, scale_dtype=dtype)
        bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        return cls(q, s.to(dtype), z.to(dtype), group, bias)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """Dense (N, padded K) weights in ``dtype`` (padding columns are multiplied by zero inputs)."""
        n, g = self.out_features, self.padded_in // self.group
        codes = _unpack_cpu_int4(self.packed, n, self.padded_in).to(dtype).view(n, g, self.group)
        sz = self.scales_zeros.to(dtype).transpose(0, 1)                  # (N, G, 2)
        return ((codes - INT4_MID) * sz[..., :1] + sz[..., 1:]).view(n, self.padded_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = _flat(x, self.in_features)
        if self.padded_in != self.in_features:
            x2 = F.pad(x2, (0, self.padded_in - self.in_features))
        if self.layout_known and self.dense_rows and x2.shape[0] > self.dense_rows:
            y = F.linear(x2, self.dequantized(x.dtype))
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group, self.scales_zeros)
        return _add_bias(y.view(*x.shape[:-1], self.out_features), self.bias)

    @torch.no_grad()
    def codes(self, chunk: int = 512) -> torch.Tensor:
        """The (N, K) uint8 codes. Read from the packed layout when it is the known one; otherwise
        recovered exactly by running the kernel on identity rows with scale 1 and zero 8."""
        if self.layout_known:
            return _unpack_cpu_int4(self.packed, self.out_features, self.padded_in)[:, :self.in_features]
        g = self.padded_in // self.group
        ones = torch.ones(g, self.out_features)
        unit = torch.stack([ones, ones * INT4_MID], dim=-1)
        rows = []
        for start in range(0, self.in_features, chunk):
            eye = torch.eye(self.padded_in)[start:min(start + chunk, self.in_features)]
            rows.append(torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, self.group, unit))
        return torch.cat(rows).t().round().to(torch.uint8).contiguous()  # (N, K)

    def tensors(self) -> dict[str, torch.Tensor]:
        codes = self.codes()
        if codes.shape[1] % 2:
            codes = F.pad(codes, (0, 1), value=INT4_MID)
        return {"qweight": pack_int4(codes), "scale": self.scales_zeros[..., 0].t().contiguous(),
                "zero": self.scales_zeros[..., 1].t().contiguous(), **self._bias_dict()}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], dtype: torch.dtype, in_features: int = 0,
                     group: int = 128) -> Int4Linear:
        codes = unpack_int4(t["qweight"])[:, :in_features]
        bias = t.get("bias")
        bias = None if bias is None else bias.to(dtype)
        return cls(codes, t["scale"].to(dtype), t["zero"].to(dtype), group, bias)


class Int8BlockLinear(_QuantLinear):
    """Weight-only int8, symmetric, one scale per block of ``group`` (32) values along K: two int4 halves
    (see the module doc), so the memory is 8 bits a weight plus the scales and the kernel torch's int4 one."""

    kind = "int8-block"

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                 group: int = INT8_BLOCK, dense_rows: int = DENSE_ROWS_INT8_BLOCK) -> None:
        super().__init__(qweight.shape[1], qweight.shape[0], bias)
        self.group, self.dense_rows = group, dense_rows
        u = qweight.to(torch.int16) + 128                                   # 1..255
        s = scale.float()
        dtype = scale.dtype
        self.hi = Int4Linear((u >> 4).to(torch.uint8), (16 * s).to(dtype), torch.zeros_like(scale), group)
        self.lo = Int4Linear((u & 15).to(torch.uint8), scale, (8 * s).to(dtype), group)

    @classmethod
    def from_float(cls, linear: nn.Linear, dtype: torch.dtype, group: int = INT8_BLOCK) -> Int8BlockLinear:
        q, s = quantize_int8_blocks(linear.weight.detach(), group, scale_dtype=dtype)
        return cls(q, s.to(dtype), None if linear.bias is None else linear.bias.detach().to(dtype), group)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """Dense (N, padded K) weights: the code rebuilt from its halves (needs the known kernel layout), times
        its block's scale, in ``dtype`` (as ``Int8Linear.dequantized``)."""
        n, kp, g = self.out_features, self.hi.padded_in, self.group
        q = _join_halves(_unpack_cpu_int4(self.hi.packed, n, kp), _unpack_cpu_int4(self.lo.packed, n, kp))
        s = self.lo.scales_zeros[..., 0].t().to(dtype)                         # (N, G)
        return (q.to(dtype).view(n, kp // g, g) * s[..., None]).view(n, kp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = _flat(x, self.in_features)
        if self.hi.layout_known and self.dense_rows and x2.shape[0] > self.dense_rows:
            pad = self.hi.padded_in - self.in_features
            y = F.linear(F.pad(x2, (0, pad)) if pad else x2, self.dequantized(x.dtype))
        else:
            y = self.hi(x2) + self.lo(x2)
        return _add_bias(y.view(*x.shape[:-1], self.out_features), self.bias)

    def tensors(self) -> dict[str, torch.Tensor]:
        q = _join_halves(self.hi.codes(), self.lo.codes())
        return {"qweight": q, "scale": self.lo.scales_zeros[..., 0].t().contiguous(), **self._bias_dict()}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], dtype: torch.dtype, group: int | None = None,
                     **_) -> Int8BlockLinear:
        bias = t.get("bias")
        return cls(t["qweight"], t["scale"].to(dtype), None if bias is None else bias.to(dtype),
                   group or INT8_BLOCK)


def _join_halves(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """The int8 code from its two uint8 4-bit halves (``q + 128 = 16 h + l``): 16 h + l, sign bit flipped."""
    return ((hi << 4) | lo).bitwise_xor(0x80).view(torch.int8)


def _unpack_cpu_int4(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Codes (N, K) int32 from the x86 CPU int4 kernel layout: (N/64, K, 32) bytes, low nibble = row j
    of the 64-row block, high nibble = row j + 32. Callers check the result against known codes."""
    if n % 64 or packed.numel() * 2 != n * k:
        return torch.full((n, k), 255, dtype=torch.uint8)
    p = packed.view(n // 64, k, 32)
    return torch.cat([p & 0x0F, p >> 4], dim=-1).permute(0, 2, 1).reshape(n, k)   # uint8


QUANT_MODULES: dict[str, type[_QuantLinear]] = {m.kind: m for m in (Int8Linear, W8A8Linear, Int4Linear,
                                                                     Int8BlockLinear)}
