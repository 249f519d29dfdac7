"""How each float dtype's bits are split into coded fields (architecture of the codec, as data).

A value of ``width`` bits is cut into fields. A field is a tuple of runs ``(shift, bits)``; the first run
fills the symbol's low bits. The top field gathers sign, exponent and the leading mantissa bits, which
are far from uniform and are entropy coded jointly (the mantissa's leading bits depend on the exponent);
the sign goes to the symbol's lowest bit so that a chunk's used symbols form a compact range (small
frequency tables). Lower fields are mostly noise; every chunk of every field is stored rANS-coded, raw
bit-packed or constant, whichever is smallest, so structured low bits (upcast, quantised or fine-tuned
weights, XOR deltas) still compress.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

Run = tuple[int, int]            # (shift in the value, number of bits)
MAX_FIELD_BITS = 16


@dataclass(frozen=True)
class Layout:
    name: str                           # safetensors dtype string
    width: int                          # bits per value: 8, 16 or 32
    fields: tuple[tuple[Run, ...], ...]  # coded fields, top first; together they tile [0, width)

    def __post_init__(self) -> None:
        if self.width not in (8, 16, 32):
            raise ValueError(f"layout {self.name}: width {self.width} is not 8, 16 or 32")
        mask = 0
        for field in self.fields:
            bits = sum(b for _, b in field)
            if not field or not 1 <= bits <= MAX_FIELD_BITS:
                raise ValueError(f"layout {self.name}: field {field} has {bits} bits (1..{MAX_FIELD_BITS})")
            for shift, b in field:
                m = ((1 << b) - 1) << shift
                if b < 1 or shift < 0 or shift + b > self.width or mask & m:
                    raise ValueError(f"layout {self.name}: run {(shift, b)} leaves the value or overlaps")
                mask |= m
        if mask != (1 << self.width) - 1:
            raise ValueError(f"layout {self.name}: fields {self.fields} do not cover all {self.width} bits")

    @property
    def uint(self) -> type:
        return {8: np.uint8, 16: np.uint16, 32: np.uint32}[self.width]

    def field_bits(self) -> list[int]:
        return [sum(b for _, b in f) for f in self.fields]

    def symbols(self, values: np.ndarray, field: int) -> np.ndarray:
        """Symbols of one field (uint32) from unsigned values."""
        wide = values.astype(np.uint32, copy=False)
        out = np.zeros(values.shape, np.uint32)
        at = 0
        for shift, b in self.fields[field]:
            out |= ((wide >> np.uint32(shift)) & np.uint32((1 << b) - 1)) << np.uint32(at)
            at += b
        return out

    @cached_property
    def patterns(self) -> np.ndarray:
        """(fields, 2**max_bits) uint32: each field's symbol -> its bits placed in the value (read-only)."""
        bits = self.field_bits()
        out = np.zeros((len(self.fields), 1 << max(bits)), np.uint32)
        for f, field in enumerate(self.fields):
            sym = np.arange(1 << bits[f], dtype=np.uint32)
            at = 0
            for shift, b in field:
                out[f, :sym.size] |= ((sym >> np.uint32(at)) & np.uint32((1 << b) - 1)) << np.uint32(shift)
                at += b
        out.flags.writeable = False
        return out

    def to_json(self) -> dict:
        return {"name": self.name, "width": self.width, "fields": [[list(r) for r in f] for f in self.fields]}

    @classmethod
    def from_json(cls, d: dict) -> "Layout":
        return _interned(cls, str(d["name"]), int(d["width"]),
                         tuple(tuple((int(s), int(b)) for s, b in f) for f in d["fields"]))


@lru_cache(maxsize=256)
def _interned(cls, name: str, width: int, fields) -> Layout:
    """One Layout object per distinct layout read from files, so its ``patterns`` are built once."""
    return cls(name, width, fields)


# Top field: sign + exponent + leading mantissa bits (measured on MiniLM weights, ratio incl. tables):
#   bf16  s|e8 m3 + m4 raw: 65.876%   (s|e8 m2 + m5: 65.861%, but m4 keeps the fused one-pass decoder)
#   fp16  s|e5 m4 + m6 raw: 84.606%   (s|e5 m5: 84.663%, s|e5 m6: 84.784%, s|e5 m7: 85.03%)
# Past a few mantissa bits the joint entropy stops falling while each chunk's frequency table grows.
# 8-bit formats are coded whole.
LAYOUTS: dict[str, Layout] = {
    "BF16": Layout("BF16", 16, (((15, 1), (4, 11)), ((0, 4),))),                    # s|e8 m3, m4
    "F16": Layout("F16", 16, (((15, 1), (6, 9)), ((0, 6),))),                      # s|e5 m4, m6
    "F32": Layout("F32", 32, (((31, 1), (20, 11)), ((16, 4),), ((8, 8),), ((0, 8),))),  # s|e8 m3, m4, m8, m8
    "F8_E4M3": Layout("F8_E4M3", 8, (((0, 8),),)),
    "F8_E5M2": Layout("F8_E5M2", 8, (((0, 8),),)),
}
# Format version 2 layouts per mode (measured on MiniLM, chunks of 2**18 values):
#   max  (rANS32): bf16 s|e8 m3 + m4 raw (66.05% incl. tables; e8 m2 + 6 raw bits 66.04% but a third field
#                  to merge); fp16 s|e5 m4 + m4 + m2 raw; fp32 as version 1. Raw fields of 1/2/4/8 bits merge
#                  in the decoder's single pass.
#   fast (Huffman): the exponent alone is coded, the rest raw bytes (bf16 e8 66.54%; e8 m1 66.31% but its
#                  9-bit symbols halve the symbols per lookup).
LAYOUTS_V2: dict[str, dict[str, Layout]] = {
    "max": {**LAYOUTS, "F16": Layout("F16", 16, (((15, 1), (6, 9)), ((0, 4),), ((4, 2),)))},
    "fast": {
        **LAYOUTS,
        "BF16": Layout("BF16", 16, (((7, 8),), ((0, 7), (15, 1)))),
        "F16": Layout("F16", 16, (((10, 5),), ((0, 8),), ((8, 2),), ((15, 1),))),
        "F32": Layout("F32", 32, (((23, 8),), ((0, 8),), ((8, 8),), ((16, 7), (31, 1)))),
    },
}
MODES = tuple(LAYOUTS_V2)

# Integer views of the same widths, for XOR deltas of other dtypes (no float structure to exploit).
PLAIN: dict[int, Layout] = {
    8: Layout("U8", 8, (((0, 8),),)),
    16: Layout("U16", 16, (((8, 8),), ((0, 8),))),
    32: Layout("U32", 32, (((24, 8),), ((16, 8),), ((8, 8),), ((0, 8),))),
}

# Integer payloads (int8 factors, packed INT4 codes as uint8) are coded whole: their byte distribution is
# far from uniform (a quantised weight's codes cluster around zero), so they carry less than 8 bits each.
INTEGERS: dict[str, Layout] = {
    "I8": Layout("I8", 8, (((0, 8),),)),
    "U8": PLAIN[8],
}

# safetensors dtype string -> bytes per element, for every dtype we may pass through.
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
