"""Scalar inner loops of the GGUF quantiser, compiled with numba (torch's per-op overhead dominates
these loops: thousands of tiny column updates, hundreds of candidate scales per block).

``search`` is the weighted scale (and min) search over one set of sub-blocks; ``gptq_batch`` rounds a
batch of columns in order with GPTQ error feedback inside the batch. Both are exact transcriptions of
the reference torch expressions documented in ``gguf_quant``.
"""
from __future__ import annotations

import numpy as np
from numba import njit

STEPS = np.arange(-5, 6, dtype=np.float32) * np.float32(0.2)   # offsets of the divisor from the code range


@njit(cache=True, fastmath=False)
def _codes_err_sym(x, w, s, qmin, qmax):
    err = 0.0
    inv = 1.0 / s if s != 0 else 0.0
    for k in range(x.shape[0]):
        q = min(max(np.rint(x[k] * inv), qmin), qmax)
        e = x[k] - s * q
        err += w[k] * e * e
    return err


@njit(cache=True, fastmath=False)
def _lsq_sym(x, w, s0, qmin, qmax):
    inv = 1.0 / s0
    num = 0.0
    den = 0.0
    for k in range(x.shape[0]):
        q = min(max(np.rint(x[k] * inv), qmin), qmax)
        num += w[k] * x[k] * q
        den += w[k] * q * q
    return num / den if den > 0 else 0.0


@njit(cache=True, fastmath=False)
def _lsq_affine(x, w, s0, o0, qmin, qmax):
    inv = 1.0 / s0
    sw = sq = sx = sqq = sqx = 0.0
    for k in range(x.shape[0]):
        q = min(max(np.rint((x[k] - o0) * inv), qmin), qmax)
        sw += w[k]
        sq += w[k] * q
        sx += w[k] * x[k]
        sqq += w[k] * q * q
        sqx += w[k] * q * x[k]
    det = sw * sqq - sq * sq
    if abs(det) <= 1e-20 * max(sw * sqq, 1e-30):
        return 0.0, sx / max(sw, 1e-30), sqx, sqq
    s = (sw * sqx - sq * sx) / det
    return s, (sx - s * sq) / max(sw, 1e-30), sqx, sqq


@njit(cache=True, fastmath=False)
def _codes_err_affine(x, w, s, o, qmin, qmax):
    err = 0.0
    inv = 1.0 / s if s != 0 else 0.0
    for k in range(x.shape[0]):
        q = min(max(np.rint((x[k] - o) * inv), qmin), qmax)
        e = x[k] - s * q - o
        err += w[k] * e * e
    return err


@njit(cache=True, fastmath=False)
def search(X, IMP, qmin, qmax, asym, nonpos_offset, steps):
    """Best scale/offset per sub-block. ``X`` (rows, nsub, sub) float32, ``IMP`` (rows, nsub, sub) > 0
    (a broadcast view when all rows share one importance vector)."""
    rows, nsub, sub = X.shape
    S = np.zeros((rows, nsub), dtype=np.float32)
    O = np.zeros((rows, nsub), dtype=np.float32)
    for r in range(rows):
        for j in range(nsub):
            x = X[r, j]
            w = IMP[r, j]
            if not asym:
                amax = 0.0
                for k in range(sub):
                    if abs(x[k]) > abs(amax):
                        amax = x[k]
                if amax == 0:
                    continue
                best, best_s = np.inf, 0.0
                for side in range(2):
                    for st in steps:
                        div = -(-qmin + st) if side == 0 else (qmax + st)
                        s = _lsq_sym(x, w, amax / div, qmin, qmax)
                        if s == 0:
                            continue
                        e = _codes_err_sym(x, w, s, qmin, qmax)
                        if e < best:
                            best, best_s = e, s
                S[r, j] = best_s
                continue
            lo, hi = x[0], x[0]
            for k in range(sub):
                lo = min(lo, x[k])
                hi = max(hi, x[k])
            if nonpos_offset:
                lo = min(lo, 0.0)
            if hi <= lo:
                O[r, j] = lo
                continue
            best, best_s, best_o = np.inf, 0.0, lo
            for st in steps:
                s0 = (hi - lo) / (qmax + st)
                s, o, sqx, sqq = _lsq_affine(x, w, s0, lo, qmin, qmax)
                if nonpos_offset and o > 0:
                    o = 0.0
                    s = sqx / sqq if sqq > 0 else 0.0
                if s <= 0:
                    s, o = s0, lo
                e = _codes_err_affine(x, w, s, o, qmin, qmax)
                if e < best:
                    best, best_s, best_o = e, s, o
            S[r, j] = best_s
            O[r, j] = best_o
    return S, O


@njit(cache=True, fastmath=False)
def gptq_batch(W1, U1, S, O, qmin, qmax, codes, E1):
    """Round the columns of ``W1`` (rows, n) in order; feed each error forward through ``U1`` (n, n).

    ``S``/``O`` (rows, n) are each column's effective scale/offset. Writes ``codes`` and the scaled
    errors ``E1`` (both (rows, n)); ``W1`` is updated in place.
    """
    rows, n = W1.shape
    for r in range(rows):
        for i in range(n):
            s, o = S[r, i], O[r, i]
            w = W1[r, i]
            inv = np.float32(1.0) / s if s != 0 else np.float32(0.0)
            q = min(max(np.rint((w - o) * inv), qmin), qmax)
            codes[r, i] = q
            e = (w - (s * q + o)) / U1[i, i]
            E1[r, i] = e
            for j in range(i + 1, n):
                W1[r, j] -= e * U1[i, j]
    return codes, E1
