"""Grid-aware coding: bf16 tensors whose values lie exactly on per-block affine grids (dequantised GGUF).

Every checkpoint that transformers loads from a GGUF is ``bf16(f32(d) * q + f32(m))`` per block of 32
values (Q4_1: fp16 ``d``, ``m``, codes 0..15; Q8_0: fp16 ``d``, codes -128..127, no ``m``). Storing the
codes and the block parameters instead of the float bits is bit-exact when the parameters are found:
for each block the extremes fix them (the quantiser maps the minimum to code 0 and the maximum to the
top code), so the search enumerates the few fp16 values that round to the extremes and checks all 32
values. Blocks that fit no grid are stored as they are (exceptions); a tensor takes the grid path only
when almost all blocks fit (the caller also compares against float coding and keeps the smaller).

Reconstruction (``reconstruct``) is numpy float32 arithmetic, two separately rounded operations, then
round-to-nearest-even to bf16, the same as the dequantiser; the encoder checks it bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

BLOCK = 32
KINDS = {"q4_1": (0, 15, True), "q8_0": (-128, 127, False)}   # name -> (code min, code max, has min)
SAMPLE_BLOCKS = 512
MIN_FIT = 0.97                 # fraction of blocks that must fit for a tensor to take the grid path
MAX_CANDIDATES = 64

_F16 = np.arange(1 << 15, dtype=np.uint16).view(np.float16).astype(np.float32)   # non-negative fp16
_POS = _F16[:0x7C00]           # finite non-negative fp16 values, increasing with the bit pattern


@dataclass
class Grid:
    kind: str
    codes: np.ndarray        # uint8 (int8 codes as their bytes), one per value
    d: np.ndarray            # uint16 fp16 bits, one per block
    m: np.ndarray | None     # uint16 fp16 bits, one per block (q4_1)
    exc_blocks: np.ndarray   # int64 block numbers stored as they are
    exc_values: np.ndarray   # uint16 bf16 bits, (len(exc_blocks), 32)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits, round to nearest even (finite values)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def _f16(bits: np.ndarray) -> np.ndarray:
    return np.asarray(bits, np.uint16).view(np.float16).astype(np.float32)


def reconstruct(g: Grid) -> np.ndarray:
    """The bf16 bits of a grid tensor (flat uint16)."""
    nb = g.d.size
    d = _f16(g.d)[:, None]
    if g.kind == "q4_1":
        v = d * g.codes.reshape(nb, BLOCK).astype(np.float32) + _f16(g.m)[:, None]
    else:
        v = g.codes.view(np.int8).reshape(nb, BLOCK).astype(np.float32) * d
    out = bf16_round(v).reshape(-1)
    if g.exc_blocks.size:
        out.reshape(nb, BLOCK)[g.exc_blocks] = g.exc_values
    return out


@numba.njit(cache=True, inline="always")
def _halfwidth(h):
    """Half the spacing of bf16 values around bits ``h``: values within it of ``h`` round to ``h``
    (ties are settled by the bit-exact check of the whole tensor)."""
    e = (np.int64(h) >> 7) & 0xFF
    return 0.5 * 2.0 ** (max(e, 1) - 127 - 7)


@numba.njit(cache=True, inline="always")
def _rounds_to(y, fv, h, hw):
    """Whether float32 ``y`` rounds (to nearest even) to the bf16 value ``fv`` (bits ``h``)."""
    if (y < 0) != (fv < 0) or (y == 0) != (fv == 0):
        return False
    diff = abs(np.float64(y)) - abs(np.float64(fv))
    if diff < 0 and (h & 0x7F) == 0 and ((h >> 7) & 0xFF) > 1:
        hw = hw * 0.5                    # below a power of two the spacing halves
    a = abs(diff)
    return a < hw or (a == hw and (h & 1) == 0)


@numba.njit(cache=True)
def _fp16_range(pos, lo, hi, out):
    """fp16 bit patterns with value in [lo, hi] into ``out``; returns the count (capped by out.size)."""
    n = 0
    if hi >= 0:
        a = np.searchsorted(pos, max(lo, 0.0))
        b = np.searchsorted(pos, hi, side="right")
        for k in range(a, b):
            if n < out.size:
                out[n] = k
            n += 1
    if lo < 0:
        a = np.searchsorted(pos, max(-hi, 0.0))
        b = np.searchsorted(pos, -lo, side="right")
        for k in range(a, b):
            if k == 0:
                continue
            if n < out.size:
                out[n] = 0x8000 | k
            n += 1
    return n


@numba.njit(cache=True)
def _fit_block(v, fv, pos, qlo, qhi, has_m, codes, dm):
    """Find fp16 d (and m) reproducing the 32 bf16 values ``v`` (``fv`` as floats); fills codes and dm."""
    hw = np.empty(BLOCK, np.float64)
    for i in range(BLOCK):
        hw[i] = _halfwidth(v[i])
    mc = np.empty(MAX_CANDIDATES, np.int64)
    dc = np.empty(MAX_CANDIDATES, np.int64)
    if has_m:
        imin, imax = np.argmin(fv), np.argmax(fv)
        lo, hi = fv[imin] - hw[imin] * 1.000001, fv[imin] + hw[imin] * 1.000001
        nm = min(_fp16_range(pos, lo, hi, mc), MAX_CANDIDATES)
        top = qhi
    else:
        imax = np.argmax(np.abs(fv))
        nm = 1
        mc[0] = 0
        top = qhi if fv[imax] >= 0 else -qhi   # the largest magnitude maps to +-127
    for a in range(nm):
        mb = mc[a]
        m = np.float32(0.0)
        if has_m:
            m = pos[mb & 0x7FFF] * (-1 if mb & 0x8000 else 1)
        lo, hi = fv[imax] - hw[imax] * 1.000001, fv[imax] + hw[imax] * 1.000001
        dlo, dhi = (lo - m) / top, (hi - m) / top
        if dlo > dhi:
            dlo, dhi = dhi, dlo
        nd = _fp16_range(pos, dlo, dhi, dc)
        if nd > MAX_CANDIDATES:
            continue
        for b in range(nd):
            db = dc[b]
            d = pos[db & 0x7FFF] * (-1 if db & 0x8000 else 1)
            ok = True
            for i in range(BLOCK):
                if d == 0:
                    q0 = 0
                else:
                    q0 = int(np.rint((fv[i] - m) / d))
                hit = False
                for q in (q0, q0 - 1, q0 + 1):
                    if q < qlo or q > qhi:
                        continue
                    if has_m:
                        y = np.float32(np.float32(d) * np.float32(q)) + np.float32(m)
                    else:
                        y = np.float32(q) * np.float32(d)
                    if _rounds_to(y, fv[i], v[i], hw[i]):
                        codes[i] = np.uint8(q & 0xFF)
                        hit = True
                        break
                if not hit:
                    ok = False
                    break
            if ok:
                dm[0] = db
                dm[1] = mb
                return True
    return False


@numba.njit(cache=True, nogil=True)
def fit_blocks(values, fvals, pos, qlo, qhi, has_m, codes, d, m, ok):
    """Fit every block of ``values`` (bf16 bits, a multiple of 32); returns the number that fit."""
    nb = values.size // BLOCK
    dm = np.zeros(2, np.int64)
    n = 0
    for b in range(nb):
        blk = values[b * BLOCK:(b + 1) * BLOCK]
        if _fit_block(blk, fvals[b * BLOCK:(b + 1) * BLOCK], pos, qlo, qhi, has_m, codes[b * BLOCK:(b + 1) * BLOCK], dm):
            d[b] = dm[0]
            m[b] = dm[1]
            ok[b] = True
            n += 1
        else:
            ok[b] = False
    return n


def _fit(values: np.ndarray, kind: str):
    qlo, qhi, has_m = KINDS[kind]
    nb = values.size // BLOCK
    codes = np.zeros(values.size, np.uint8)
    d, m, ok = np.zeros(nb, np.uint16), np.zeros(nb, np.uint16), np.zeros(nb, np.bool_)
    fvals = (values.astype(np.uint32) << np.uint32(16)).view(np.float32)
    n = fit_blocks(values, fvals, _POS, qlo, qhi, has_m, codes, d, m, ok)
    return n, codes, d, m, ok


def detect(values: np.ndarray) -> Grid | None:
    """The grid of a flat bf16 tensor (uint16 bits), or None when it does not lie on one."""
    values = np.ascontiguousarray(values, np.uint16).ravel()
    if values.size < BLOCK * 4 or values.size % BLOCK:
        return None
    nb = values.size // BLOCK
    for kind in KINDS:
        sample = values[: min(nb, SAMPLE_BLOCKS) * BLOCK]
        if _fit(sample, kind)[0] < MIN_FIT * (sample.size // BLOCK):
            continue
        n, codes, d, m, ok = _fit(values, kind)
        if n < MIN_FIT * nb:
            continue
        # ties and signed zeros were judged by value: the bit-exact check decides, misfits become exceptions
        g = Grid(kind, codes, d, m if KINDS[kind][2] else None, np.zeros(0, np.int64), np.zeros((0, BLOCK), np.uint16))
        bad = ~ok | (reconstruct(g).reshape(nb, BLOCK) != values.reshape(nb, BLOCK)).any(axis=1)
        if bad.sum() > (1 - MIN_FIT) * nb:
            continue
        exc = np.flatnonzero(bad)
        codes.reshape(nb, BLOCK)[exc] = 0
        d[exc] = 0
        m[exc] = 0
        g.exc_blocks, g.exc_values = exc.astype(np.int64), values.reshape(nb, BLOCK)[exc].copy()
        if np.array_equal(reconstruct(g), values):
            return g
    return None
