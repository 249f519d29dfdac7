"""Interleaved rANS (range asymmetric numeral systems) over small alphabets, compiled with numba.

Pure codec math: arrays in, arrays out, no I/O. The coder follows Duda's rANS as laid out in
F. Giesen's ``rans64`` (64-bit state, 32-bit renormalisation words), with ``LANES`` independent states
interleaved over one word stream so that decoding has instruction-level parallelism.

Stream layout (uint32 words, read front to back by the decoder):
  ``[lane0.lo, lane0.hi, lane1.lo, lane1.hi, ..., renormalisation words ...]``
Every decoder read is bounds-checked, and a stream is accepted only when all lanes end in the
encoder's initial state and every word was consumed, so a corrupt stream is detected, not decoded.

Frequency tables are quantised so that they sum to ``2**prob_bits``; decoding uses one lookup table
entry per slot: ``pattern | freq << 32 | (slot - cum) << 48``, where ``pattern`` is the symbol's bits
already placed where they belong in the output value (so a field can gather scattered bits, e.g. the
sign beside the exponent, at no decoding cost).
"""
from __future__ import annotations

import numba
import numpy as np

LANES = 8
RANS_L = np.uint64(1 << 31)        # lower bound of the state interval [L, 2**63)
MAX_PROB_BITS = 16                 # lookup table size bound (2**16 entries)

# Error codes returned by the kernels (0 = ok).
ERR_SHORT = 1        # stream ended before the symbols did
ERR_STATE = 2        # final states / word count do not match: the stream is corrupt
ERR_TABLE = 3        # a frequency table does not sum to 2**prob_bits or leaves the alphabet
ERR_RAW = 4          # a raw bit-packed field has the wrong word count
ERROR_TEXT = {ERR_SHORT: "coded stream too short", ERR_STATE: "coded stream failed its end-state check",
              ERR_TABLE: "invalid frequency table", ERR_RAW: "raw field has the wrong length"}


def normalize_freqs(counts: np.ndarray, prob_bits: int) -> np.ndarray:
    """Quantise symbol ``counts`` to frequencies summing to ``2**prob_bits``; every used symbol gets >= 1.

    Largest-remainder rounding, then any excess taken from the largest frequencies. Requires the number
    of used symbols to be at most ``2**prob_bits``.
    """
    total_m = 1 << prob_bits
    counts = np.asarray(counts, dtype=np.int64)
    nz = counts > 0
    if int(nz.sum()) > total_m:
        raise ValueError(f"{int(nz.sum())} symbols do not fit a {prob_bits}-bit frequency table")
    exact = counts * (total_m / counts.sum())
    freq = np.where(nz, np.maximum(1, np.floor(exact)), 0).astype(np.int64)
    diff = total_m - int(freq.sum())
    if diff > 0:  # hand out the remainder by largest fractional part
        frac = np.where(nz, exact - np.floor(exact), -1.0)
        freq[np.argsort(-frac, kind="stable")[:diff]] += 1
    while diff < 0:  # the max(1, .) floors overshot: take from the largest frequencies
        order = np.argsort(-freq, kind="stable")
        for i in order:
            take = min(-diff, int(freq[i]) - 1, int(freq[i]) // 2 + 1)
            if take > 0:
                freq[i] -= take
                diff += take
            if diff == 0:
                break
    return freq


def coded_bits(counts: np.ndarray, freq: np.ndarray, prob_bits: int) -> float:
    """Bits the rANS stream of ``counts`` costs under quantised ``freq`` (excluding the fixed state words)."""
    nz = counts > 0
    return float(-(counts[nz] * (np.log2(freq[nz]) - prob_bits)).sum())


@numba.njit(cache=True, nogil=True)
def encode(sym, freq, prob_bits):
    """rANS-encode ``sym`` (uint32 array) with ``freq`` (uint32, sums to 2**prob_bits). Returns uint32 words."""
    n = sym.size
    cum = np.zeros(freq.size + 1, np.uint64)
    for s in range(freq.size):
        cum[s + 1] = cum[s] + np.uint64(freq[s])
    out = np.empty(n + 2 * LANES, np.uint32)
    pos = out.size
    x = np.full(LANES, RANS_L, np.uint64)
    pb = np.uint64(prob_bits)
    base = (RANS_L >> pb) << np.uint64(32)
    mask32 = np.uint64(0xFFFFFFFF)
    for i in range(n - 1, -1, -1):
        j = i % LANES
        s = sym[i]
        f = np.uint64(freq[s])
        xj = x[j]
        if xj >= base * f:
            pos -= 1
            out[pos] = np.uint32(xj & mask32)
            xj >>= np.uint64(32)
        x[j] = ((xj // f) << pb) + (xj % f) + cum[s]
    for j in range(LANES - 1, -1, -1):
        pos -= 1
        out[pos] = np.uint32(x[j] >> np.uint64(32))
        pos -= 1
        out[pos] = np.uint32(x[j] & mask32)
    return out[pos:].copy()


@numba.njit(cache=True, nogil=True)
def build_lut(tables, at, patt, prob_bits, lut):
    """Fill ``lut`` (2**prob_bits uint64) from the table at ``tables[at:]``: ``lo, count, freq[count]``.

    ``patt`` maps each symbol of the alphabet to its output bit pattern."""
    alphabet = patt.size
    if at < 0 or at + 2 > tables.size:
        return ERR_TABLE
    lo = np.int64(tables[at])
    count = np.int64(tables[at + 1])
    if lo + count > alphabet or at + 2 + count > tables.size:
        return ERR_TABLE
    total = np.int64(0)
    for k in range(count):
        total += np.int64(tables[at + 2 + k])
    if total != (1 << prob_bits):
        return ERR_TABLE
    slot = 0
    for k in range(count):
        f = np.int64(tables[at + 2 + k])
        entry_hi = np.uint64(patt[lo + k]) | (np.uint64(f) << np.uint64(32))
        for b in range(f):
            lut[slot] = entry_hi | (np.uint64(b) << np.uint64(48))
            slot += 1
    return 0


@numba.njit(cache=True, nogil=True, inline="always")
def _step(x, lut, mask, pb, words, ptr, last):
    """One decode step, branch-free: the renormalisation word is always loaded (clamped index, so never out
    of bounds) and selected by a conditional move. A data-dependent branch here mispredicts every few
    symbols; measured 2.5x slower, and shift/multiply masking instead of the select 20% slower."""
    e = lut[x & mask]
    x = ((e >> np.uint64(32)) & np.uint64(0xFFFF)) * (x >> pb) + (e >> np.uint64(48))
    xn = (x << np.uint64(32)) | np.uint64(words[min(ptr, last)])
    need = x < RANS_L
    x = xn if need else x
    return x, ptr + need, e


@numba.njit(cache=True, nogil=True, inline="always")
def _end_check(xs, ptr, size):
    """0 when every lane ended in the initial state and exactly ``size`` words were read; else an error."""
    if ptr > size:
        return ERR_SHORT
    for j in range(LANES):
        if xs[j] != RANS_L:
            return ERR_STATE
    if ptr != size:
        return ERR_STATE
    return 0


@numba.njit(cache=True, nogil=True)
def decode_into(words, lut, prob_bits, out, first):
    """Decode ``out.size`` symbols; store their patterns into ``out`` (assign if ``first`` else OR)."""
    n = out.size
    if words.size < 2 * LANES:
        return ERR_SHORT
    xs = np.empty(LANES, np.uint64)
    for j in range(LANES):
        xs[j] = np.uint64(words[2 * j]) | (np.uint64(words[2 * j + 1]) << np.uint64(32))
    x0, x1, x2, x3, x4, x5, x6, x7 = xs[0], xs[1], xs[2], xs[3], xs[4], xs[5], xs[6], xs[7]
    ptr = 2 * LANES
    last = words.size - 1
    pb = np.uint64(prob_bits)
    mask = np.uint64((1 << prob_bits) - 1)
    dt = out.dtype.type
    i = 0
    while i + 8 <= n:  # eight independent lanes per round: the dependency chains overlap
        x0, ptr, e0 = _step(x0, lut, mask, pb, words, ptr, last)
        x1, ptr, e1 = _step(x1, lut, mask, pb, words, ptr, last)
        x2, ptr, e2 = _step(x2, lut, mask, pb, words, ptr, last)
        x3, ptr, e3 = _step(x3, lut, mask, pb, words, ptr, last)
        x4, ptr, e4 = _step(x4, lut, mask, pb, words, ptr, last)
        x5, ptr, e5 = _step(x5, lut, mask, pb, words, ptr, last)
        x6, ptr, e6 = _step(x6, lut, mask, pb, words, ptr, last)
        x7, ptr, e7 = _step(x7, lut, mask, pb, words, ptr, last)
        if first:
            out[i], out[i + 1], out[i + 2], out[i + 3] = dt(e0), dt(e1), dt(e2), dt(e3)
            out[i + 4], out[i + 5], out[i + 6], out[i + 7] = dt(e4), dt(e5), dt(e6), dt(e7)
        else:
            out[i] |= dt(e0)
            out[i + 1] |= dt(e1)
            out[i + 2] |= dt(e2)
            out[i + 3] |= dt(e3)
            out[i + 4] |= dt(e4)
            out[i + 5] |= dt(e5)
            out[i + 6] |= dt(e6)
            out[i + 7] |= dt(e7)
        i += 8
    xs[0], xs[1], xs[2], xs[3], xs[4], xs[5], xs[6], xs[7] = x0, x1, x2, x3, x4, x5, x6, x7
    while i < n:
        j = i % LANES
        xj, ptr, e = _step(xs[j], lut, mask, pb, words, ptr, last)
        xs[j] = xj
        out[i] = dt(e) if first else out[i] | dt(e)
        i += 1
    # Reads past the end were clamped (memory-safe); a stream that needed them is corrupt.
    return _end_check(xs, ptr, words.size)


@numba.njit(cache=True, nogil=True)
def decode_with_nibbles(words, lut, prob_bits, out, nib_words, nib_patt):
    """``decode_into`` (first field) fused with a raw 4-bit second field: one pass instead of two (the
    bf16/fp16 layout). ``nib_words`` is that field's packed words, ``nib_patt`` its 16 patterns."""
    n = out.size
    if nib_words.size != (n * 4 + 31) // 32:
        return ERR_RAW
    if words.size < 2 * LANES:
        return ERR_SHORT
    nib = nib_words.view(np.uint8)
    xs = np.empty(LANES, np.uint64)
    for j in range(LANES):
        xs[j] = np.uint64(words[2 * j]) | (np.uint64(words[2 * j + 1]) << np.uint64(32))
    x0, x1, x2, x3, x4, x5, x6, x7 = xs[0], xs[1], xs[2], xs[3], xs[4], xs[5], xs[6], xs[7]
    ptr = 2 * LANES
    last = words.size - 1
    pb = np.uint64(prob_bits)
    mask = np.uint64((1 << prob_bits) - 1)
    dt = out.dtype.type
    i = 0
    while i + 8 <= n:
        x0, ptr, e0 = _step(x0, lut, mask, pb, words, ptr, last)
        x1, ptr, e1 = _step(x1, lut, mask, pb, words, ptr, last)
        x2, ptr, e2 = _step(x2, lut, mask, pb, words, ptr, last)
        x3, ptr, e3 = _step(x3, lut, mask, pb, words, ptr, last)
        x4, ptr, e4 = _step(x4, lut, mask, pb, words, ptr, last)
        x5, ptr, e5 = _step(x5, lut, mask, pb, words, ptr, last)
        x6, ptr, e6 = _step(x6, lut, mask, pb, words, ptr, last)
        x7, ptr, e7 = _step(x7, lut, mask, pb, words, ptr, last)
        k = i >> 1
        b0, b1, b2, b3 = nib[k], nib[k + 1], nib[k + 2], nib[k + 3]
        out[i] = dt(e0) | dt(nib_patt[b0 & 15])
        out[i + 1] = dt(e1) | dt(nib_patt[b0 >> 4])
        out[i + 2] = dt(e2) | dt(nib_patt[b1 & 15])
        out[i + 3] = dt(e3) | dt(nib_patt[b1 >> 4])
        out[i + 4] = dt(e4) | dt(nib_patt[b2 & 15])
        out[i + 5] = dt(e5) | dt(nib_patt[b2 >> 4])
        out[i + 6] = dt(e6) | dt(nib_patt[b3 & 15])
        out[i + 7] = dt(e7) | dt(nib_patt[b3 >> 4])
        i += 8
    xs[0], xs[1], xs[2], xs[3], xs[4], xs[5], xs[6], xs[7] = x0, x1, x2, x3, x4, x5, x6, x7
    while i < n:
        j = i % LANES
        xj, ptr, e = _step(xs[j], lut, mask, pb, words, ptr, last)
        xs[j] = xj
        out[i] = dt(e) | dt(nib_patt[(nib[i >> 1] >> ((i & 1) << 2)) & 15])
        i += 1
    return _end_check(xs, ptr, words.size)


@numba.njit(cache=True, nogil=True)
def pack_bits(vals, width):
    """Pack ``vals`` (uint32, each < 2**width) LSB-first into uint32 words, ``width`` bits each."""
    n = vals.size
    out = np.zeros((n * width + 31) // 32, np.uint32)
    acc = np.uint64(0)
    nb = 0
    p = 0
    for i in range(n):
        acc |= np.uint64(vals[i]) << np.uint64(nb)
        nb += width
        if nb >= 32:
            out[p] = np.uint32(acc & np.uint64(0xFFFFFFFF))
            p += 1
            acc >>= np.uint64(32)
            nb -= 32
    if nb > 0:
        out[p] = np.uint32(acc)
    return out


@numba.njit(cache=True, nogil=True)
def unpack_into(words, width, out, patt, first):
    """Inverse of ``pack_bits``: store ``patt[val]`` into ``out`` (assign if ``first`` else OR)."""
    n = out.size
    if words.size != (n * width + 31) // 32:
        return ERR_RAW
    dt = out.dtype.type
    if width == 8 or width == 4:   # byte-aligned fast paths (little-endian words: LSB-first = byte order)
        b = words.view(np.uint8)
        if width == 8:
            for i in range(n):
                out[i] = dt(patt[b[i]]) if first else out[i] | dt(patt[b[i]])
        else:
            for i in range(n):
                v = dt(patt[(b[i >> 1] >> ((i & 1) << 2)) & 15])
                out[i] = v if first else out[i] | v
        return 0
    m = np.uint64((1 << width) - 1)
    acc = np.uint64(0)
    nb = 0
    p = 0
    for i in range(n):
        if nb < width:
            acc |= np.uint64(words[p]) << np.uint64(nb)
            p += 1
            nb += 32
        v = dt(patt[acc & m])
        acc >>= np.uint64(width)
        nb -= width
        out[i] = v if first else out[i] | v
    return 0
