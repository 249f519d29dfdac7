"""rANS with 32-bit states and 16-bit renormalisation, 32 interleaved lanes (format version 2, ``max`` mode).

The encoder (numba) and a portable numba decoder (the fallback when no C compiler is present; the compiled
decoders are in ``kernels.c``). Symbol ``i`` belongs to lane ``i % 32``; the decoder runs the lanes of a
round in order and every lane that falls below ``L = 2**16`` reads one 16-bit word, so the scalar, AVX2
(4 x 8 lanes) and AVX-512 (2 x 16 lanes) decoders consume the same word sequence.

Stream (uint32 words): ``[W] [32 initial states] [W uint16 words, padded to a whole uint32]``. A stream is
accepted only when all lanes end in state ``L`` and exactly ``W`` words were read.

Table (uint16, in the chunk's table plane): ``lo, count, freq[count]``, frequencies summing to ``2**pb``;
the decoder's lookup entry per slot is ``freq | (slot - cum) << 16``.
"""
from __future__ import annotations

import numba
import numpy as np

from .rans import ERR_SHORT, ERR_STATE, ERR_TABLE

LANES = 32
RANS_L = 1 << 16
STATE_WORDS = 1 + LANES   # header: word count, then the states


@numba.njit(cache=True, nogil=True)
def encode(sym, freq, prob_bits):
    """Encode ``sym`` (uint32) under ``freq`` (uint32, sums to 2**prob_bits). Returns the uint32 stream."""
    n = sym.size
    cum = np.zeros(freq.size + 1, np.uint64)
    for s in range(freq.size):
        cum[s + 1] = cum[s] + np.uint64(freq[s])
    w16 = np.empty(n + 1, np.uint16)
    pos = w16.size
    x = np.full(LANES, np.uint64(RANS_L), np.uint64)
    pb = np.uint64(prob_bits)
    base = np.uint64((RANS_L >> prob_bits) << 16)
    for i in range(n - 1, -1, -1):
        j = i % LANES
        s = sym[i]
        f = np.uint64(freq[s])
        xj = x[j]
        if xj >= base * f:
            pos -= 1
            w16[pos] = np.uint16(xj & np.uint64(0xFFFF))
            xj >>= np.uint64(16)
        x[j] = ((xj // f) << pb) + (xj % f) + cum[s]
    nw = w16.size - pos
    out = np.zeros(STATE_WORDS + (nw + 1) // 2, np.uint32)
    out[0] = nw
    for j in range(LANES):
        out[1 + j] = np.uint32(x[j])
    body = out[STATE_WORDS:].view(np.uint16)
    body[:nw] = w16[pos:]
    return out


@numba.njit(cache=True, nogil=True)
def build_tables(tables, at, patt, prob_bits, lut, smap):
    """Decoder tables from the frequency table at ``tables[at:]``; 0 or an error code."""
    if at < 0 or at + 2 > tables.size:
        return ERR_TABLE
    lo = np.int64(tables[at])
    count = np.int64(tables[at + 1])
    if lo + count > patt.size or at + 2 + count > tables.size:
        return ERR_TABLE
    total = np.int64(0)
    for k in range(count):
        total += np.int64(tables[at + 2 + k])
    if total != (1 << prob_bits):
        return ERR_TABLE
    slot = 0
    for k in range(count):
        f = np.int64(tables[at + 2 + k])
        if f >= (1 << prob_bits):
            return ERR_TABLE
        for b in range(f):
            lut[slot] = np.uint32(f | (b << 16))
            smap[slot] = patt[lo + k]
            slot += 1
    return 0


@numba.njit(cache=True, nogil=True)
def decode_into(stream, lut, smap, prob_bits, out, first):
    """Decode ``out.size`` symbols; store their patterns (assign if ``first`` else OR). 0 or an error code."""
    n = out.size
    if stream.size < STATE_WORDS:
        return ERR_SHORT
    nw = np.int64(stream[0])
    if stream.size != STATE_WORDS + (nw + 1) // 2:
        return ERR_SHORT
    x = np.empty(LANES, np.uint32)
    for j in range(LANES):
        x[j] = stream[1 + j]
        if x[j] < RANS_L:
            return ERR_STATE
    words = stream[STATE_WORDS:].view(np.uint16)
    last = max(nw - 1, 0)
    mask = np.uint32((1 << prob_bits) - 1)
    pb = np.uint32(prob_bits)
    dt = out.dtype.type
    ptr = 0
    for i in range(n):
        j = i % LANES
        xj = x[j]
        s = xj & mask
        e = lut[s]
        y = (e & np.uint32(0xFFFF)) * (xj >> pb) + (e >> np.uint32(16))
        if y < RANS_L:
            w = np.uint32(words[min(ptr, last)]) if nw > 0 else np.uint32(0)
            y = (y << np.uint32(16)) | w
            ptr += 1
        x[j] = y
        v = dt(smap[s])
        out[i] = v if first else out[i] | v
    if ptr > nw:
        return ERR_SHORT
    for j in range(LANES):
        if x[j] != RANS_L:
            return ERR_STATE
    return 0 if ptr == nw else ERR_STATE
