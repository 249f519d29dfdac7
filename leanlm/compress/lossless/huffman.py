"""Canonical Huffman coding with lengths <= 12 over 4 interleaved bit streams (format version 2, ``fast``).

Code lengths (length-limited), the numba encoder and a portable numba decoder (the fallback when no C
compiler is present; the compiled multi-symbol lookup-table decoder is in ``kernels.c``).

Codes are canonical (deflate's assignment: by length, then symbol) and written LSB-first, bit-reversed,
so a decoder indexes a 2**12 table with the next 12 bits. A chunk's values are cut into blocks of
``BLOCK``; block ``b`` is written to stream ``b % 4`` (the decoder runs four independent streams in
lock-step). Stream (uint32 words): ``[bits of streams 0..3]`` then each stream's bytes, zero-padded to
``ceil(bits / 8) + 8`` bytes rounded up to whole uint32 words (the padding lets a decoder read 8 bytes
at any position it may legally reach). A stream is accepted only when exactly its bits were read.

Table (uint16, in the chunk's table plane): ``lo, count, len[count]`` (0 = symbol absent).
"""
from __future__ import annotations

import heapq

import numba
import numpy as np

from .rans import ERR_SHORT, ERR_STATE, ERR_TABLE

MAX_LEN = 12
STREAMS = 4
BLOCK = 1024


def code_lengths(counts: np.ndarray, max_len: int = MAX_LEN) -> np.ndarray:
    """Huffman code lengths (uint8) for ``counts``, none above ``max_len`` (counts flattened and the code
    rebuilt until it fits, as bzip2 does). Needs at least two used symbols."""
    counts = np.asarray(counts, np.int64)
    used = np.flatnonzero(counts)
    if used.size < 2:
        raise ValueError("a Huffman code needs at least two used symbols")
    if used.size > 1 << max_len:
        raise ValueError(f"{used.size} symbols do not fit codes of at most {max_len} bits")
    c = counts[used].copy()
    while True:
        heap = [(int(v), k, None) for k, v in enumerate(c)]
        heapq.heapify(heap)
        parent = {}
        nxt = len(c)
        while len(heap) > 1:
            a, b = heapq.heappop(heap), heapq.heappop(heap)
            parent[a[1]] = parent[b[1]] = nxt
            heapq.heappush(heap, (a[0] + b[0], nxt, None))
            nxt += 1
        depth = {nxt - 1: 0}
        for node in range(nxt - 2, -1, -1):
            depth[node] = depth[parent[node]] + 1
        lens = np.array([depth[k] for k in range(len(c))], np.int64)
        if lens.max() <= max_len:
            break
        c = 1 + c // 2
    out = np.zeros(counts.size, np.uint8)
    out[used] = lens
    return out


def canonical_codes(lens: np.ndarray) -> np.ndarray:
    """Bit-reversed canonical codes (uint32) for ``lens`` (deflate's assignment)."""
    lens = np.asarray(lens, np.int64)
    nlen = np.bincount(lens, minlength=MAX_LEN + 1)
    nlen[0] = 0
    nxt = np.zeros(MAX_LEN + 2, np.int64)
    code = 0
    for ln in range(1, MAX_LEN + 1):
        code = (code + nlen[ln - 1]) << 1
        nxt[ln] = code
    out = np.zeros(lens.size, np.uint32)
    for s in range(lens.size):
        ln = int(lens[s])
        if ln:
            c = int(nxt[ln])
            nxt[ln] += 1
            out[s] = int(f"{c:0{ln}b}"[::-1], 2)
    return out


def coded_bits(counts: np.ndarray, lens: np.ndarray) -> int:
    return int((np.asarray(counts, np.int64) * lens).sum())


@numba.njit(cache=True, nogil=True)
def encode(sym, codes, lens):
    """Encode ``sym`` (uint32) with bit-reversed ``codes`` and ``lens``. Returns the uint32 stream."""
    n = sym.size
    bits = np.zeros(STREAMS, np.int64)
    for i in range(n):
        bits[(i // BLOCK) % STREAMS] += lens[sym[i]]
    nwords = np.zeros(STREAMS, np.int64)
    total = STREAMS
    for k in range(STREAMS):
        nwords[k] = ((bits[k] + 7) // 8 + 8 + 3) // 4
        total += nwords[k]
    out = np.zeros(total, np.uint32)
    start = STREAMS
    for k in range(STREAMS):
        out[k] = np.uint32(bits[k])
        body = out[start:start + nwords[k]]
        acc = np.uint64(0)
        nb = 0
        p = 0
        b = k
        while b * BLOCK < n:
            for i in range(b * BLOCK, min(n, (b + 1) * BLOCK)):
                s = sym[i]
                acc |= np.uint64(codes[s]) << np.uint64(nb)
                nb += lens[s]
                if nb >= 32:
                    body[p] = np.uint32(acc & np.uint64(0xFFFFFFFF))
                    p += 1
                    acc >>= np.uint64(32)
                    nb -= 32
            b += STREAMS
        if nb > 0:
            body[p] = np.uint32(acc)
        start += nwords[k]
    return out


@numba.njit(cache=True, nogil=True)
def build_table(tables, at, alphabet, one):
    """Single-symbol lookup ``one[12 bits] = symbol | length << 16`` from ``tables[at:]``; 0 or an error."""
    if at < 0 or at + 2 > tables.size:
        return ERR_TABLE
    lo = np.int64(tables[at])
    count = np.int64(tables[at + 1])
    if lo + count > alphabet or at + 2 + count > tables.size or count < 2:
        return ERR_TABLE
    nlen = np.zeros(MAX_LEN + 1, np.int64)
    for k in range(count):
        ln = np.int64(tables[at + 2 + k])
        if ln > MAX_LEN:
            return ERR_TABLE
        nlen[ln] += 1
    nlen[0] = 0
    nxt = np.zeros(MAX_LEN + 2, np.int64)
    code = 0
    kraft = 0
    for ln in range(1, MAX_LEN + 1):
        code = (code + nlen[ln - 1]) << 1
        nxt[ln] = code
        kraft += nlen[ln] << (MAX_LEN - ln)
    if kraft != (1 << MAX_LEN):
        return ERR_TABLE
    for k in range(count):
        ln = np.int64(tables[at + 2 + k])
        if ln == 0:
            continue
        c = nxt[ln]
        nxt[ln] += 1
        rev = 0
        for b in range(ln):
            rev |= ((c >> b) & 1) << (ln - 1 - b)
        for i in range(rev, 1 << MAX_LEN, 1 << ln):
            one[i] = np.uint32((lo + k) | (ln << 16))
    return 0


@numba.njit(cache=True, nogil=True)
def decode_into(stream, one, patt, out, first):
    """Decode ``out.size`` symbols (one per lookup); store their patterns (assign if ``first`` else OR)."""
    n = out.size
    if stream.size < STREAMS:
        return ERR_SHORT
    starts = np.zeros(STREAMS, np.int64)
    nbytes = np.zeros(STREAMS, np.int64)
    at = STREAMS
    for k in range(STREAMS):
        nw = ((np.int64(stream[k]) + 7) // 8 + 8 + 3) // 4
        if at + nw > stream.size:
            return ERR_SHORT
        starts[k] = at * 4
        nbytes[k] = nw * 4
        at += nw
    if at != stream.size:
        return ERR_STATE
    raw = stream.view(np.uint8)
    pos = np.zeros(STREAMS, np.int64)
    dt = out.dtype.type
    mask = (1 << MAX_LEN) - 1
    for i in range(n):
        k = (i // BLOCK) % STREAMS
        p = min(pos[k] >> 3, nbytes[k] - 8)
        v = np.uint64(0)
        for q in range(8):
            v |= np.uint64(raw[starts[k] + p + q]) << np.uint64(8 * q)
        e = one[np.int64(v >> np.uint64(pos[k] & 7)) & mask]
        pos[k] += e >> 16
        val = dt(patt[e & 0xFFFF])
        out[i] = val if first else out[i] | val
    for k in range(STREAMS):
        if pos[k] != np.int64(stream[k]):
            return ERR_STATE
    return 0
