"""GGML block formats: what each quantised type stores, and packers into llama.cpp's exact byte layout.

Every type here is an *affine sub-block code*: a row is cut into blocks of ``block`` values, each block
into sub-blocks of ``sub`` values that share one scale (and, for the asymmetric types, one offset), and
each value is an integer code ``q`` in ``[qmin, qmax]``: ``w = scale * q + offset``. The legacy 32-blocks
(Q4_0 .. Q8_0) store the scale (and min) as fp16 per block. The K-quants (256-blocks) store one fp16
super-scale ``d`` (and ``dmin``) per block and small integer sub-scales: ``scale_j = d * sc_j`` and
``offset_j = -dmin * m_j``.

The packers take integer fields and return ``(n_blocks, type_size)`` uint8 arrays; the layouts follow
ggml's ``block_q*`` structs (ggml-common.h) as gguf-py's dequantisers read them, and the tests check
every type bit-exactly against ``gguf.quants.dequantize``. ``effective`` gives the float scale/offset
per sub-block that a packed block dequantises with, so the quantiser can round against exactly those.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

QK_K = 256


@dataclass(frozen=True)
class BlockFormat:
    qtype: T
    block: int                 # values per packed block
    sub: int                   # values sharing one scale
    qmin: int                  # code range, as dequantised (signed for the symmetric types)
    qmax: int
    asym: bool                 # has an offset per sub-block
    sc_min: int = 0            # K-quants: integer sub-scale range (None-like 0/0 for the legacy types)
    sc_max: int = 0
    m_max: int = 0             # K-quants with mins: integer sub-min range [0, m_max]

    @property
    def kquant(self) -> bool:
        return self.block == QK_K

    @property
    def type_size(self) -> int:
        return GGML_QUANT_SIZES[self.qtype][1]

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.type_size / self.block


FORMATS: dict[str, BlockFormat] = {
    "Q4_0": BlockFormat(T.Q4_0, 32, 32, -8, 7, False),
    "Q4_1": BlockFormat(T.Q4_1, 32, 32, 0, 15, True),
    "Q5_0": BlockFormat(T.Q5_0, 32, 32, -16, 15, False),
    "Q5_1": BlockFormat(T.Q5_1, 32, 32, 0, 31, True),
    "Q8_0": BlockFormat(T.Q8_0, 32, 32, -127, 127, False),
    "Q2_K": BlockFormat(T.Q2_K, QK_K, 16, 0, 3, True, 0, 15, 15),
    "Q3_K": BlockFormat(T.Q3_K, QK_K, 16, -4, 3, False, -32, 31),
    "Q4_K": BlockFormat(T.Q4_K, QK_K, 32, 0, 15, True, 0, 63, 63),
    "Q5_K": BlockFormat(T.Q5_K, QK_K, 32, 0, 31, True, 0, 63, 63),
    "Q6_K": BlockFormat(T.Q6_K, QK_K, 16, -32, 31, False, -128, 127),
}


def _f16(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).astype(np.float16).reshape(-1, 1).view(np.uint8)


def _nibbles(u: np.ndarray) -> np.ndarray:
    """(n, 32) values < 16 -> (n, 16) bytes: value l in the low nibble of byte l, l+16 in the high one."""
    return (u[:, :16] | (u[:, 16:] << 4)).astype(np.uint8)


def _bits(u: np.ndarray, width: int, per_byte: int, group: int) -> np.ndarray:
    """Pack ``width``-bit fields: byte ``g*group + l`` holds element ``g*group*per_byte + k*group + l`` at bit k*width."""
    n, count = u.shape
    u = u.reshape(n, count // (group * per_byte), per_byte, group).astype(np.uint8)
    out = np.zeros((n, count // (group * per_byte), group), dtype=np.uint8)
    for k in range(per_byte):
        out |= u[:, :, k, :] << (k * width)
    return out.reshape(n, -1)


# ---- legacy 32-blocks: q are stored codes (unsigned for Q4/Q5, int8 for Q8_0) --------------------------

def pack_legacy(name: str, d: np.ndarray, q: np.ndarray, m: np.ndarray | None = None) -> np.ndarray:
    """``d`` (n,) scales, ``q`` (n, 32) codes in [qmin, qmax], ``m`` (n,) mins for Q4_1/Q5_1."""
    fmt = FORMATS[name]
    q = np.asarray(q, dtype=np.int32)
    parts = [_f16(d)]
    if fmt.asym:
        parts.append(_f16(m))
    if name == "Q8_0":
        parts.append(q.astype(np.int8).view(np.uint8))
        return np.concatenate(parts, axis=1)
    u = (q - fmt.qmin).astype(np.uint32)  # stored unsigned
    if name in ("Q5_0", "Q5_1"):
        qh = np.zeros(u.shape[0], dtype=np.uint32)
        for i in range(32):
            qh |= ((u[:, i] >> 4) & 1) << i
        parts.append(qh.astype("<u4").view(np.uint8).reshape(-1, 4))
    parts.append(_nibbles(u & 0xF))
    return np.concatenate(parts, axis=1)


# ---- K-quants: q are codes as dequantised, sc/mn integer sub-scales/sub-mins ----------------------------

def _pack_scales_k4(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K: 8 six-bit scales and 8 six-bit mins in 12 bytes (ggml's get_scale_min_k4 layout)."""
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    out = np.zeros((sc.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = (mn[:, :4] & 63) | ((mn[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 0xF) | ((mn[:, 4:] & 0xF) << 4)
    return out


def pack_q2_k(d, dmin, sc, mn, q) -> np.ndarray:
    scales = (sc.astype(np.uint8) & 0xF) | (mn.astype(np.uint8) << 4)
    return np.concatenate([scales, _bits(q, 2, 4, 32), _f16(d), _f16(dmin)], axis=1)


def pack_q3_k(d, sc, q) -> np.ndarray:
    u = (np.asarray(q) + 4).astype(np.uint8)        # 0..7: low two bits in qs, bit 2 in hmask
    s = (np.asarray(sc) + 32).astype(np.uint8)      # 0..63
    scales = np.zeros((u.shape[0], 12), dtype=np.uint8)
    scales[:, 0:8] = (s[:, 0:8] & 0xF) | ((s[:, 8:16] & 0xF) << 4)
    for k in range(4):                              # high two bits of scale k*4 + j in byte 8 + j
        scales[:, 8:12] |= ((s[:, 4 * k:4 * k + 4] >> 4) & 3) << (2 * k)
    hmask = _bits(u >> 2, 1, 8, 32)
    return np.concatenate([hmask, _bits(u & 3, 2, 4, 32), scales, _f16(d)], axis=1)


def pack_q4_k(d, dmin, sc, mn, q) -> np.ndarray:
    return np.concatenate([_f16(d), _f16(dmin), _pack_scales_k4(sc, mn), _bits(q, 4, 2, 32)], axis=1)


def pack_q5_k(d, dmin, sc, mn, q) -> np.ndarray:
    u = np.asarray(q).astype(np.uint8)
    return np.concatenate([_f16(d), _f16(dmin), _pack_scales_k4(sc, mn), _bits(u >> 4, 1, 8, 32),
                           _bits(u & 0xF, 4, 2, 32)], axis=1)


def pack_q6_k(d, sc, q) -> np.ndarray:
    u = (np.asarray(q) + 32).astype(np.uint8)
    n = u.shape[0]
    halves = u.reshape(n, 2, 128)
    ql = np.concatenate([_bits(halves[:, h] & 0xF, 4, 2, 64) for h in range(2)], axis=1)
    qh = np.concatenate([_bits(halves[:, h] >> 4, 2, 4, 32) for h in range(2)], axis=1)
    return np.concatenate([ql, qh, np.asarray(sc).astype(np.int8).view(np.uint8), _f16(d)], axis=1)


def pack(name: str, fields: dict[str, np.ndarray]) -> np.ndarray:
    """Pack one type's integer fields (see ``quantised_fields`` in gguf_quant) into its block bytes."""
    if not FORMATS[name].kquant:
        return pack_legacy(name, fields["d"], fields["q"], fields.get("m"))
    q = fields["q"]
    if name == "Q2_K":
        return pack_q2_k(fields["d"], fields["dmin"], fields["sc"], fields["mn"], q)
    if name == "Q3_K":
        return pack_q3_k(fields["d"], fields["sc"], q)
    if name == "Q4_K":
        return pack_q4_k(fields["d"], fields["dmin"], fields["sc"], fields["mn"], q)
    if name == "Q5_K":
        return pack_q5_k(fields["d"], fields["dmin"], fields["sc"], fields["mn"], q)
    return pack_q6_k(fields["d"], fields["sc"], q)
