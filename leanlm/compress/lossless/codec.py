"""Encode / decode one flat array of float bit patterns into chunked, field-split, entropy-coded words.

Pure math over numpy arrays (no files). A tensor's values (an unsigned-integer view) are cut into chunks
of ``chunk_values``; each chunk's fields (see ``layout``) are stored in one of three modes, whichever is
smallest: CONST (one value, no words), RAW (bit-packed) or RANS (coded with a per-chunk frequency table).

An encoded array is four numpy arrays: ``words`` (uint32, every chunk's field data back to back),
``index`` (int64, ``(chunks, fields, 4)``: mode, word offset, word count, aux = const value or table
offset), ``tables`` (uint16: ``lo, count, freq[count]`` per RANS entry) and the layout. Chunks decode
independently, so decoding runs on as many threads as asked (numba kernels and the compiled decoder
release the GIL).

Coders (``CodecConfig.coder``): ``rans64`` (format version 1: 64-bit states, 8 lanes, numba only),
``rans32`` (version 2, ``max`` mode: 32 lanes of 32-bit states, see ``rans32``) and ``huff`` (version 2,
``fast`` mode: length-limited canonical Huffman, see ``huffman``). Version-2 chunks decode with the compiled
decoder (``cext``) when it is available, else with the numba decoders of the same format.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ...config import require
from . import cext, huffman, rans, rans32
from .layout import Layout

CONST, RAW, RANS, RANS32, HUFF = 0, 1, 2, 3, 4
MODE_NAMES = {CONST: "const", RAW: "raw", RANS: "rans", RANS32: "rans32", HUFF: "huff"}
CODERS = {"rans64": RANS, "rans32": RANS32, "huff": HUFF}
TABLE_BYTES_FACTOR = 0.6   # tables are zstd-compressed in the container; estimate for mode choice
ERR_MODE, ERR_RANGE = 5, 6


class CodecError(ValueError):
    """Encoded data is inconsistent or corrupt; the message says which chunk and field."""


@dataclass(frozen=True)
class CodecConfig:
    chunk_values: int = 1 << 18   # values per independently decodable chunk
    prob_bits: int = 14           # rANS frequency precision (lookup table of 2**prob_bits entries)
    min_gain: float = 0.02        # code a field chunk only if that saves this fraction of its raw size
                                  # (a near-uniform field costs decode time for almost no bytes)
    coder: str = "rans32"         # rans32 (max), huff (fast), rans64 (format version 1)

    def __post_init__(self) -> None:
        require(1 << 10 <= self.chunk_values <= 1 << 24, f"chunk_values {self.chunk_values} not in [2^10, 2^24]")
        require(8 <= self.prob_bits <= 15, f"prob_bits {self.prob_bits} not in [8, 15]")
        require(0.0 <= self.min_gain < 0.5, f"min_gain {self.min_gain} not in [0, 0.5)")
        require(self.coder in CODERS, f"coder {self.coder!r} not one of {sorted(CODERS)}")


@dataclass
class Encoded:
    words: np.ndarray    # uint32
    index: np.ndarray    # int64 (chunks, fields, 4)
    tables: np.ndarray   # uint16
    layout: Layout
    count: int
    config: CodecConfig
    _jobs: tuple | None = field(default=None, init=False, repr=False, compare=False)   # see _job_template

    @property
    def nbytes(self) -> int:
        return self.words.nbytes + self.index.nbytes + self.tables.nbytes

    def mode_counts(self) -> dict[str, int]:
        modes = self.index[..., 0].ravel()
        return {name: int((modes == m).sum()) for m, name in MODE_NAMES.items()}


def _encode_field(vals: np.ndarray, bits: int, cfg: CodecConfig):
    """(mode, words, aux, table) for one chunk's field values (uint32, each < 2**bits)."""
    counts = np.bincount(vals, minlength=1 << bits)
    used = np.flatnonzero(counts)
    if used.size == 1:
        return CONST, None, int(used[0]), None
    raw_words = (vals.size * bits + 31) // 32
    lo, hi = int(used[0]), int(used[-1])
    table_words = (hi - lo + 3) / 2 * TABLE_BYTES_FACTOR
    limit = raw_words * (1 - cfg.min_gain)
    if cfg.coder == "huff":
        if used.size <= 1 << huffman.MAX_LEN:
            lens = huffman.code_lengths(counts)
            est = huffman.coded_bits(counts, lens) / 32 + huffman.STREAMS * 4 + table_words
            if est < limit:
                words = huffman.encode(vals, huffman.canonical_codes(lens), lens)
                table = np.concatenate([[lo, hi - lo + 1], lens[lo:hi + 1]]).astype(np.uint16)
                return HUFF, words, 0, table
        return RAW, rans.pack_bits(vals, bits), 0, None
    if used.size < (1 << cfg.prob_bits):
        freq = rans.normalize_freqs(counts, cfg.prob_bits)
        fixed = 2 * rans.LANES if cfg.coder == "rans64" else rans32.STATE_WORDS
        est = rans.coded_bits(counts, freq, cfg.prob_bits) / 32 + fixed + table_words
        if est < limit:
            coder = rans.encode if cfg.coder == "rans64" else rans32.encode
            words = coder(vals, freq.astype(np.uint32), cfg.prob_bits)
            table = np.concatenate([[lo, hi - lo + 1], freq[lo:hi + 1]]).astype(np.uint16)
            if words.size + table_words < limit:
                return CODERS[cfg.coder], words, 0, table
    return RAW, rans.pack_bits(vals, bits), 0, None


def _encode_chunk(chunk: np.ndarray, layout: Layout, cfg: CodecConfig):
    return [_encode_field(layout.symbols(chunk, f), bits, cfg)
            for f, bits in enumerate(layout.field_bits())]


def encode(values: np.ndarray, layout: Layout, config: CodecConfig = CodecConfig(), threads: int = 1) -> Encoded:
    """Encode a flat unsigned-integer array ``values`` (dtype ``layout.uint``)."""
    values = np.ascontiguousarray(values).ravel()
    if values.dtype != layout.uint:
        raise TypeError(f"layout {layout.name} expects {np.dtype(layout.uint)} values, got {values.dtype}")
    c = config.chunk_values
    starts = range(0, values.size, c)
    job = lambda s: _encode_chunk(values[s:s + c], layout, config)  # noqa: E731
    if threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(threads) as pool:
            chunks = list(pool.map(job, starts))
    else:
        chunks = [job(s) for s in starts]
    index = np.zeros((len(chunks), len(layout.fields), 4), np.int64)
    words, tables, w_off, t_off = [], [], 0, 0
    for ci, fields in enumerate(chunks):
        for fi, (mode, w, aux, table) in enumerate(fields):
            n = 0 if w is None else w.size
            if table is not None:
                aux = t_off
                tables.append(table)
                t_off += table.size
            index[ci, fi] = (mode, w_off, n, aux)
            if w is not None:
                words.append(w)
            w_off += n
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)  # noqa: E731
    return Encoded(cat(words, np.uint32), index, cat(tables, np.uint16), layout, int(values.size), config)


def _decode_chunk(c: int, enc: Encoded, patt: np.ndarray, bits: list[int], out: np.ndarray,
                  lut: np.ndarray) -> tuple[int, int]:
    """Decode chunk ``c`` into ``out`` (its slice) with the numba kernels; returns (error code, field).

    The loop over fields stays in Python on purpose: numba compiles a kernel called from another kernel
    for non-contiguous slices, which measured 2.2x slower than these direct calls."""
    chunk = enc.config.chunk_values
    o = out[c * chunk: (c + 1) * chunk]
    nwords = enc.words.size
    rows = enc.index[c].tolist()
    pb = enc.config.prob_bits
    if len(rows) == 2 and rows[0][0] == RANS and rows[1][0] == RAW and bits[1] == 4:  # bf16 / fp16 fast path
        (_, off, cnt, aux), (_, off1, cnt1, _) = rows
        if min(off, cnt, off1, cnt1) < 0 or off + cnt > nwords or off1 + cnt1 > nwords:
            return ERR_RANGE, 0
        err = rans.build_lut(enc.tables, aux, patt[0, :1 << bits[0]], pb, lut)
        if err == 0:
            err = rans.decode_with_nibbles(enc.words[off:off + cnt], lut, pb, o,
                                           enc.words[off1:off1 + cnt1], patt[1, :16])
        return err, 0
    for f, (mode, off, cnt, aux) in enumerate(rows):
        first = f == 0
        if off < 0 or cnt < 0 or off + cnt > nwords:
            return ERR_RANGE, f
        w = enc.words[off:off + cnt]
        p = patt[f, :1 << bits[f]]
        if mode == CONST:
            if not 0 <= aux < p.size or cnt != 0:
                return ERR_RANGE, f
            if first:
                o[:] = p[aux]
            else:
                o |= o.dtype.type(p[aux])
            err = 0
        elif mode == RAW:
            err = rans.unpack_into(w, bits[f], o, p, first)
        elif mode == RANS:
            err = rans.build_lut(enc.tables, aux, p, pb, lut)
            if err == 0:
                err = rans.decode_into(w, lut, pb, o, first)
        elif mode == RANS32:
            lut32, smap = lut[:1 << pb].view(np.uint32)[:1 << pb], np.empty(1 << pb, np.uint32)
            err = rans32.build_tables(enc.tables, aux, p, pb, lut32, smap)
            if err == 0:
                err = rans32.decode_into(w, lut32, smap, pb, o, first)
        elif mode == HUFF:
            one = np.zeros(1 << huffman.MAX_LEN, np.uint32)
            err = huffman.build_table(enc.tables, aux, p.size, one)
            if err == 0:
                err = huffman.decode_into(w, one, p, o, first)
        else:
            err = ERR_MODE
        if err:
            return err, f
    return 0, 0


ERR_MEM, ERR_ISA = 7, cext.ERR_ISA
ERROR_TEXT = {**rans.ERROR_TEXT, ERR_MODE: "unknown field mode", ERR_RANGE: "field data out of range",
              ERR_MEM: "out of memory", ERR_ISA: "instruction set not supported by this CPU"}


@lru_cache(maxsize=256)
def _layout_arrays(layout: Layout) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(layout.patterns), np.array(layout.field_bits(), np.int32)


@lru_cache(maxsize=4)
def _scratch_bytes(lib) -> int:
    return int(lib.ll_scratch_bytes())


JOB_FIELDS = 14   # kernels.c ll_job: 14 eight-byte fields; out (column 11) and status (the last) vary
OUT, N, STATUS = 11, 10, 13


def _job_template(enc: Encoded) -> np.ndarray:
    """The compiled decoder's job table of ``enc``, one row per chunk (``kernels.c`` ``ll_job``), with each
    chunk's byte offset in the destination in the ``out`` column; built once per encoded tensor (repeated
    decodes, as the on-the-fly hooks do, reuse it). The arrays it points into stay alive with it."""
    if enc._jobs is None:
        layout, chunk = enc.layout, enc.config.chunk_values
        patt, bits = _layout_arrays(layout)
        index = np.ascontiguousarray(enc.index, np.int64)
        words, tables = np.ascontiguousarray(enc.words), np.ascontiguousarray(enc.tables)
        width, nf = layout.width // 8, len(layout.fields)
        c = np.arange(index.shape[0], dtype=np.int64)
        jobs = np.empty((index.shape[0], JOB_FIELDS), np.int64)
        jobs[:] = (words.ctypes.data, words.size, 0, nf, tables.ctypes.data, tables.size, patt.ctypes.data,
                   patt.shape[1], bits.ctypes.data, enc.config.prob_bits, 0, 0, width, 0)
        jobs[:, 2] = index.ctypes.data + c * nf * 32
        jobs[:, N] = np.minimum(chunk, enc.count - c * chunk)
        jobs[:, OUT] = c * chunk * width
        jobs.flags.writeable = False
        enc._jobs = (jobs, (patt, bits, index, words, tables))
    return enc._jobs[0]


def compiled(enc: Encoded, lib=None) -> bool:
    """Does the compiled decoder decode ``enc`` here? (``lib``: ``cext.library()`` when already looked up)"""
    return enc.config.coder != "rans64" and (lib or cext.library()) is not None


def c_jobs(enc: Encoded, out: np.ndarray) -> np.ndarray:
    """The job table decoding ``enc`` into ``out`` (contiguous, its size)."""
    jobs = _job_template(enc).copy()
    jobs[:, OUT] += out.ctypes.data
    return jobs


_LOCAL = threading.local()


def scratch_buffer(lib) -> np.ndarray:
    """The calling thread's decoder scratch (kept: a fresh one would page-fault on every tensor)."""
    need = _scratch_bytes(lib)
    buf = getattr(_LOCAL, "scratch", None)
    if buf is None or buf.size < need:
        buf = _LOCAL.scratch = np.zeros(need, np.uint8)
    return buf


BLOCK_VALUES = 1 << 19   # values per block of jobs a decode thread takes at a time (two 2**18-value chunks)


def job_blocks(jobs: np.ndarray, block_values: int | None = None) -> np.ndarray:
    """Row boundaries cutting a job table into blocks of whole neighbouring jobs of about ``block_values``
    values each (``cuts[b]:cuts[b + 1]`` is block b). Cuts fall on even rows: the decoder pairs neighbouring
    chunks from the start of what it is given, so a block of full chunks decodes as whole pairs."""
    block_values = block_values or BLOCK_VALUES
    cum = np.cumsum(jobs[:, N])
    cuts = np.searchsorted(cum, np.arange(block_values, cum[-1], block_values), side="right")
    cuts = cuts + (cuts & 1)
    return np.unique(np.concatenate([[0], cuts[cuts < jobs.shape[0]], [jobs.shape[0]]])).astype(np.int64)


def run_jobs(jobs: np.ndarray, isa: int, threads: int = 1, lib=None) -> None:
    """Decode a job table (C-contiguous; statuses land in its last column) on ``threads`` threads. With more
    than one, the table is cut into blocks (``job_blocks``) that the threads take in turn from a counter
    shared in C (``ll_decode_blocks``: one ctypes call per thread, no Python between blocks): a thread that
    drew cheap chunks (a large tensor's) takes more blocks than one that drew many small tensors, so neither
    waits for the other. The compiled decoder releases the GIL."""
    lib = lib or cext.library()
    threads = max(1, min(threads, jobs.shape[0]))
    if threads == 1:
        sc = scratch_buffer(lib)
        r = lib.ll_decode_jobs(jobs.ctypes.data, jobs.shape[0], isa, sc.ctypes.data, sc.size)
        if r < 0:
            jobs[:, STATUS] = -r
        return
    cuts = job_blocks(jobs)
    counter = np.zeros(1, np.int64)

    def run() -> None:
        sc = scratch_buffer(lib)
        r = lib.ll_decode_blocks(jobs.ctypes.data, cuts.ctypes.data, cuts.size - 1, counter.ctypes.data, isa,
                                 sc.ctypes.data, sc.size)
        if r < 0:
            jobs[:, STATUS] = -r

    futures = [pool(threads - 1).submit(run) for _ in range(threads - 1)]
    run()   # the caller's thread works too
    for f in futures:
        f.result()


def job_error(jobs: np.ndarray) -> tuple[int, int, int] | None:
    """(row, error code, field) of the first failed job, or None."""
    status = jobs[:, STATUS]
    if not status.any():
        return None
    bad = np.flatnonzero(status)
    st = int(jobs[bad[0], STATUS])
    return int(bad[0]), st & 0xFF, st >> 8


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def pool(workers: int) -> ThreadPoolExecutor:
    """A decode pool of ``workers`` threads, kept for the process (decoding many small tensors would
    otherwise start and join threads for each one)."""
    with _POOLS_LOCK:
        if workers not in _POOLS:
            _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="leanlm-decode")
        return _POOLS[workers]


def decode(enc: Encoded, threads: int = 1, out: np.ndarray | None = None, isa: str | None = None) -> np.ndarray:
    """Decode to a flat array of ``enc.layout.uint`` (into ``out`` when given: contiguous, that dtype and
    size); raises ``CodecError`` naming the bad chunk/field. ``isa`` forces the compiled decoder's
    instruction set (see ``cext``)."""
    layout, cfg = enc.layout, enc.config
    nchunks = -(-enc.count // cfg.chunk_values)
    if enc.index.shape != (nchunks, len(layout.fields), 4):
        raise CodecError(f"index shape {enc.index.shape} does not match {enc.count} values in "
                         f"{nchunks} chunks of {len(layout.fields)} fields")
    if out is None:
        out = np.empty(enc.count, layout.uint)
    else:
        _check_target(enc, out)
    out = out.reshape(-1)
    code = cext.requested_isa(isa)
    lib = cext.library()
    if enc.count and compiled(enc, lib):
        jobs = c_jobs(enc, out)
        run_jobs(jobs, code, threads, lib)
        err = job_error(jobs)
        if err is not None:
            raise _chunk_error(enc, isa, *err)
        return out
    if isa not in (None, "best", "scalar") and cfg.coder != "rans64":
        raise cext.ExtensionUnavailable(f"instruction set {isa!r} needs the compiled decoder, which is unavailable")
    patt, bits = layout.patterns, layout.field_bits()
    status = np.zeros((nchunks, 2), np.int64)

    def run(share) -> None:
        lut = np.empty(1 << cfg.prob_bits, np.uint64)
        for c in share:
            status[c] = _decode_chunk(c, enc, patt, bits, out, lut)

    threads = max(1, min(threads, nchunks))
    shares = [range(k, nchunks, threads) for k in range(threads)]
    if threads == 1:
        run(shares[0])
    else:
        futures = [pool(threads - 1).submit(run, sh) for sh in shares[1:]]
        run(shares[0])
        for f in futures:
            f.result()
    bad = np.flatnonzero(status[:, 0])
    if bad.size:
        c = int(bad[0])
        raise _chunk_error(enc, isa, c, *(int(x) for x in status[c]))
    return out


class ItemError(CodecError):
    """``decode_many``: item ``item`` is corrupt (the message says which chunk and field)."""

    def __init__(self, item: int, err: Exception):
        super().__init__(str(err))
        self.item = item


def _check_target(enc: Encoded, out: np.ndarray) -> None:
    if out.dtype != enc.layout.uint or out.size != enc.count or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"decode target must be a writeable contiguous {np.dtype(enc.layout.uint)} array of "
                         f"{enc.count} values")


def decode_many(items: list[tuple[Encoded, np.ndarray]], threads: int = 1, isa: str | None = None) -> None:
    """Decode every ``(enc, out)`` pair (``out`` as in ``decode``) as one job table: one call per block of
    jobs for all of them (see ``run_jobs``), chunks of different arrays paired in the decoder, so a model of
    many small tensors decodes at the speed of one large one. Raises ``ItemError`` (its ``item`` the failing
    pair's index; a ``CodecError``) or ``ExtensionUnavailable``."""
    code = cext.requested_isa(isa)
    lib = cext.library()
    templates, ptrs, owner = [], [], []
    for k, (enc, out) in enumerate(items):
        if not (enc.count and compiled(enc, lib)):    # empty, or numba-only: on its own
            try:
                decode(enc, threads=threads, out=out, isa=isa)
            except CodecError as e:
                raise ItemError(k, e) from e
            continue
        _check_target(enc, out)
        templates.append(_job_template(enc))
        ptrs.append(out.ctypes.data)
        owner.append(k)
    if not templates:
        return
    # one table: the templates back to back, each row's destination offset moved onto its array (the Python
    # work here is serial, so it is kept to a concatenation and one vector add: it bounds the 2-thread gain)
    rows = np.array([t.shape[0] for t in templates])
    jobs = np.concatenate(templates)
    jobs[:, OUT] += np.repeat(np.array(ptrs, np.int64), rows)
    run_jobs(jobs, code, threads, lib)
    err = job_error(jobs)
    if err is not None:
        row, c, field = err
        i = int(np.searchsorted(np.cumsum(rows), row, side="right"))
        k = owner[i]
        e = _chunk_error(items[k][0], isa, row - int(rows[:i].sum()), c, field)
        raise ItemError(k, e) if isinstance(e, CodecError) else e


def _chunk_error(enc: Encoded, isa: str | None, chunk: int, code: int, field: int) -> Exception:
    if code == ERR_ISA:
        return cext.ExtensionUnavailable(f"instruction set {isa!r} is not supported by this CPU")
    return CodecError(f"chunk {chunk} field {field} ({enc.layout.fields[field]}): {ERROR_TEXT.get(code, code)}")
