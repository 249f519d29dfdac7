"""Grid-preserving quantisation: blocks whose float values already lie on the target format's grid.

Many float checkpoints are decoded from a block format (the bundled Gemma 3 is a Q4_K_M GGUF decoded to
F32, SmolLM2 a Q4_1). Where a block's values are exactly ``fl32(S_j * q + O_j)`` for codes ``q`` in the
target's range and sub-block scale/offset the target can store (fp16 ``d``, ``m`` for the 32-blocks; fp16
``d``, ``dmin`` times 4- to 8-bit integers for the K-quants, ``kquants.FORMATS``), coding the block on that
grid has zero error, and a scale search does not land on it. This module finds such grids from the values
alone (no file metadata), per block:

1. per sub-block, the *step*: the largest number all values (symmetric types) or all differences to the
   sub-block minimum (asymmetric types) are integer multiples of, by an exact integer gcd of the float
   values scaled to integers (``_step``);
2. the block's fp16 parameters from the steps, the candidates tried in order: the convention llama.cpp's
   quantisers write (largest magnitude at the end of the code range; ``d = max / -8`` for Q4_0, the
   largest sub-scale coded as 63 for Q4_K, ...), then the gcd of the steps; offsets at the sub-block
   minimum (code 0 there), other codes tried where that does not fit;
3. every candidate is checked against float32 emulation of ggml's dequantisation, and the blocks found
   are verified once more by packing them (``kquants.pack``) and decoding with gguf-py's dequantiser:
   a block is kept only if every value comes back bit for bit. All others are left to the quantiser.

Q4_1 codes with their ``d``, ``m`` are also Q5_1 codes (0..15 within 0..31), and a Q5_0 grid is a Q8_0
grid: the search does not care which format made the values, only whether the target can hold them.
"""
from __future__ import annotations

import gguf
import numpy as np

from .kquants import FORMATS, BlockFormat, pack

CHUNK_BLOCKS = 1 << 17    # blocks per pass (memory: a few float64 copies of chunk * block values)


def _f16_exact(v: np.ndarray) -> np.ndarray:
    """Which float64 values an fp16 holds exactly (finite)."""
    with np.errstate(over="ignore", invalid="ignore"):
        h = v.astype(np.float16)
    return np.isfinite(h) & (h.astype(np.float64) == v)


def _step(D: np.ndarray) -> np.ndarray:
    """(..., n) exact float64 -> (...,) the largest t with every D/t an integer (gcd); 0 where all are
    zero, nan where the values span too many binary orders for an int64 view."""
    nz = D != 0
    m, e = np.frexp(np.where(nz, D, 1.0))
    ival = np.abs(m * 2.0 ** 53).astype(np.int64)                   # D = +-ival * 2^(e - 53)
    tz = np.log2((ival & -ival).astype(np.float64)).astype(np.int64)
    lsb = np.where(nz, e - 53 + tz, np.iinfo(np.int64).max)         # exponent of each value's lowest bit
    E = lsb.min(-1, keepdims=True)
    shift = np.where(nz, lsb - E, 0)
    ok = ((53 - tz + shift) <= 62) | ~nz
    X = np.where(nz & ok, (ival >> tz) << np.minimum(shift, 62), 0)
    G = np.gcd.reduce(X, axis=-1).astype(np.float64)
    out = G * np.exp2(np.where(nz.any(-1), E[..., 0], 0).astype(np.float64))
    return np.where(ok.all(-1), out, np.nan)


def _codes(x: np.ndarray, S: np.ndarray, O: np.ndarray, fmt: BlockFormat):
    """Integer codes of ``x`` (..., sub) on scale/offset (..., 1); whether they are exact and in range."""
    zero = -1.0 if fmt.qmin < 0 else 0.0            # a zero scale: the code's sign gives the zero's sign
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(S != 0, (x - O) / np.where(S != 0, S, 1.0),
                     np.where(np.signbit(x) != np.signbit(S), zero, 0.0))
    qi = np.round(q)
    ok = (np.isfinite(q) & (qi == q) & (qi >= fmt.qmin) & (qi <= fmt.qmax)).all(-1)
    return np.clip(np.where(np.isfinite(qi), qi, 0), -(1 << 30), 1 << 30).astype(np.int32), ok


def _emulate(S: np.ndarray, O: np.ndarray | None, q: np.ndarray) -> np.ndarray:
    """ggml's float32 dequantisation: ``S * q`` or ``S * q + O`` (S, O exact float32 products)."""
    v = S.astype(np.float32) * q.astype(np.float32)
    return v if O is None else v + O.astype(np.float32)


def _same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (np.ascontiguousarray(a, np.float32).view(np.uint32) ==
            np.ascontiguousarray(b, np.float32).view(np.uint32)).all(-1)


def _legacy(x: np.ndarray, fmt: BlockFormat) -> tuple[dict, np.ndarray]:
    """32-blocks: ``x`` (n, 32) float32 -> fields d, q (, m) and which blocks fit."""
    x64 = x.astype(np.float64)
    n = x.shape[0]
    if fmt.asym:
        lo, hi = x64.min(-1, keepdims=True), x64.max(-1, keepdims=True)
        cands = [(hi - lo) / fmt.qmax, _step(x64 - lo)[:, None]]
        O = lo
    else:
        amax = np.take_along_axis(x64, np.abs(x64).argmax(-1)[:, None], -1)
        g = _step(x64)[:, None]
        ends = [amax / fmt.qmin, np.abs(amax) / fmt.qmax]          # llama.cpp: max / -8; Q8_0 amax / 127
        cands = [*(ends if fmt.qmin != -fmt.qmax else ends[::-1]), g, -g]
        O = np.zeros((n, 1))
    d, q = np.zeros(n), np.zeros((n, fmt.block), np.int32)
    found = np.zeros(n, bool)
    off_ok = _f16_exact(O[:, 0])
    for c in cands:
        c = np.where(np.isfinite(c), c, 0.0)
        qc, ok = _codes(x64, c, O, fmt)
        ok &= ~found & off_ok & _f16_exact(c[:, 0])
        ok &= _same_bits(_emulate(c, O if fmt.asym else None, qc), x)
        d, found = np.where(ok, c[:, 0], d), found | ok
        q[ok] = qc[ok]
    fields = {"d": d.astype(np.float32), "q": q}
    if fmt.asym:
        fields["m"] = O[:, 0].astype(np.float32)
    return fields, found


def _fit_scales(S: np.ndarray, c: np.ndarray, lo: int, hi: int, divide: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Integer sub-scales ``S / c`` (n, nsub) for a super-scale candidate ``c`` (n,), and per row whether
    they are exact and in [lo, hi] with ``c`` an fp16. ``divide``: ``S`` is a step, a multiple of the
    sub-scale where a sub-block's codes share a factor (all even, say); one past ``hi`` is divided by the
    smallest factor that brings it in range (its codes grow by that factor, checked later)."""
    c = np.where(np.isfinite(c), c, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(S != 0, S / np.where(c != 0, c, 1.0)[:, None], 0.0)
    ri = np.round(r)
    for t in range(2, 9) if divide else ():
        over = (ri == r) & (ri > hi) & (ri % t == 0)
        r, ri = np.where(over, r / t, r), np.where(over, ri / t, ri)
    ok = _f16_exact(c) & ((c != 0) | (S == 0).all(-1)) & ((ri == r) & (ri >= lo) & (ri <= hi)).all(-1)
    return np.where(ok[:, None], ri, 0).astype(np.int32), ok


def _kquant_asym(x: np.ndarray, fmt: BlockFormat) -> tuple[dict, np.ndarray]:
    """Q2_K, Q4_K, Q5_K: ``x`` (n, 256) -> fields d, dmin, sc, mn, q and which blocks fit. Each sub-block's
    offset is first put at its minimum (code 0 there, as llama.cpp's quantiser nearly always leaves it),
    then one code lower at a time where that does not fit ``dmin``'s grid."""
    n, nsub = x.shape[0], fmt.block // fmt.sub
    xs = x.astype(np.float64).reshape(n, nsub, fmt.sub)
    lo = xs.min(-1)
    step = _step(xs - lo[..., None])                                # (n, nsub) scale, or a multiple
    out = {"d": np.zeros(n), "dmin": np.zeros(n), "sc": np.zeros((n, nsub), np.int32),
           "mn": np.zeros((n, nsub), np.int32), "q": np.zeros((n, nsub, fmt.sub), np.int32)}
    found = np.zeros(n, bool)
    for cd in (step.max(-1) / fmt.sc_max, _step(step)):
        sc, ok_d = _fit_scales(step, cd, 0, fmt.sc_max, divide=True)
        S = np.where(ok_d, cd, 0.0)[:, None] * sc                 # exact sub-scales
        for cm in (-lo.min(-1) / fmt.m_max, _step(-lo)):
            cm = np.where(np.isfinite(cm), cm, 0.0)
            mn, q = np.zeros((n, nsub), np.int32), np.zeros(xs.shape, np.int32)
            sub_ok = np.zeros((n, nsub), bool)
            for k in range(fmt.qmax + 1):                          # the code at the sub-block minimum
                M = S * k - lo                                      # offset -M: the minimum coded as k
                mk, ok_m = _fit_scales(M.reshape(-1, 1), np.repeat(cm, nsub), 0, fmt.m_max)
                mk, ok_m = mk.reshape(n, nsub), ok_m.reshape(n, nsub) & ~sub_ok
                O = -(cm[:, None] * mk)
                qk, ok_q = _codes(xs, S[..., None], O[..., None], fmt)
                ok_k = ok_m & ok_q & _same_bits(_emulate(S[..., None], O[..., None], qk), x.reshape(n, nsub, -1))
                mn, sub_ok = np.where(ok_k, mk, mn), sub_ok | ok_k
                q[ok_k] = qk[ok_k]
                if sub_ok[ok_d].all():
                    break
            ok = ok_d & sub_ok.all(-1) & ~found
            for key, v in (("d", cd), ("dmin", cm), ("sc", sc), ("mn", mn), ("q", q)):
                out[key][ok] = v[ok]
            found |= ok
    out["q"] = out["q"].reshape(n, -1)
    return out, found


def _kquant_sym(x: np.ndarray, fmt: BlockFormat) -> tuple[dict, np.ndarray]:
    """Q3_K, Q6_K: ``x`` (n, 256) -> fields d, sc, q and which blocks fit. The signed sub-scales take the
    sign that keeps each sub-block's codes in range (and its zeros' signs)."""
    n, nsub = x.shape[0], fmt.block // fmt.sub
    xs = x.astype(np.float64).reshape(n, nsub, fmt.sub)
    step = _step(xs)
    smax = step.max(-1)
    out = {"d": np.zeros(n), "sc": np.zeros((n, nsub), np.int32), "q": np.zeros(xs.shape, np.int32)}
    found = np.zeros(n, bool)
    g = _step(step)
    for cd in (smax / fmt.sc_min, -smax / fmt.sc_min, smax / fmt.sc_max, g, -g):
        mag, ok_d = _fit_scales(step, np.abs(cd), 0, max(-fmt.sc_min, fmt.sc_max), divide=True)
        sc, q = np.zeros((n, nsub), np.int32), np.zeros(xs.shape, np.int32)
        sub_ok = np.zeros((n, nsub), bool)
        for sign in (1, -1):
            scs = sign * np.sign(np.where(np.isfinite(cd), cd, 0.0))[:, None].astype(np.int32) * mag
            Sj = (np.where(ok_d, cd, 0.0)[:, None] * scs)[..., None]
            qs, ok_q = _codes(xs, Sj, np.zeros_like(Sj), fmt)
            ok_s = ~sub_ok & ok_q & (scs >= fmt.sc_min) & (scs <= fmt.sc_max)
            ok_s &= _same_bits(_emulate(Sj, None, qs), x.reshape(n, nsub, -1))
            sc, sub_ok = np.where(ok_s, scs, sc), sub_ok | ok_s
            q[ok_s] = qs[ok_s]
        ok = ok_d & sub_ok.all(-1) & ~found
        out["d"][ok], out["sc"][ok], out["q"][ok] = cd[ok], sc[ok], q[ok]
        found |= ok
    out["q"] = out["q"].reshape(n, -1)
    return out, found


def _kquant(x: np.ndarray, fmt: BlockFormat) -> tuple[dict, np.ndarray]:
    fields, ok = _kquant_asym(x, fmt) if fmt.asym else _kquant_sym(x, fmt)
    return {k: (v.astype(np.float32) if k in ("d", "dmin") else v) for k, v in fields.items()}, ok


def _find(x: np.ndarray, fmt: BlockFormat) -> tuple[dict, np.ndarray]:
    return _kquant(x, fmt) if fmt.kquant else _legacy(x, fmt)


def grid_blocks(W: np.ndarray, qtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Packed blocks of ``W`` (rows, cols) in ``qtype`` for the blocks on its grid.

    Returns ``(blocks, on_grid)``: ``blocks`` (rows * cols / block, type_size) uint8 in llama.cpp's layout
    (rows of blocks row-major, as the packer writes a matrix), ``on_grid`` (same count,) bool; a block
    marked on the grid decodes through gguf-py to exactly ``W``'s float32 bits, the others hold zeros.
    """
    fmt = FORMATS[qtype]
    x = np.ascontiguousarray(W, np.float32).reshape(-1, fmt.block)
    blocks = np.zeros((x.shape[0], fmt.type_size), np.uint8)
    on = np.zeros(x.shape[0], bool)
    for a in range(0, x.shape[0], CHUNK_BLOCKS):
        xc = x[a:a + CHUNK_BLOCKS]
        fields, ok = _find(xc, fmt)
        if not ok.any():
            continue
        packed = pack(qtype, {k: v[ok] for k, v in fields.items()})
        back = gguf.quants.dequantize(packed, fmt.qtype).reshape(-1, fmt.block)
        good = _same_bits(back, xc[ok])                             # verified by gguf-py's decoder
        idx = np.flatnonzero(ok)[good] + a
        blocks[idx], on[idx] = packed[good], True
    return blocks, on
