"""Reader and writer of lossless containers (one per original safetensors file; layout in ``format``).

Orchestration only: parse an original safetensors file keeping its exact header bytes, encode each tensor
with the codec (or XOR against a parent tensor), write the planes with safetensors; read them back with
every field validated, decode, and check each tensor's sha256 before anything is returned.
"""
from __future__ import annotations

import hashlib
import json
import logging
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import psutil
import zstandard
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as st_save

from ...fileio import atomic_write_bytes
from . import codec, grid
from . import format as fmt
from .codec import CodecConfig, CodecError, Encoded
from .layout import DTYPE_SIZES, INTEGERS, LAYOUTS, LAYOUTS_V2, PLAIN, Layout

try:   # ISA-L's CRC-32 (the same values as zlib's, PCLMUL-folded): ~30 GB/s here against zlib's ~4
    from isal.isal_zlib import crc32
except ImportError:   # pragma: no cover - isal is a dependency; zlib is the portable fallback
    from zlib import crc32

log = logging.getLogger(__name__)
TABLE_ZSTD_LEVEL = 19


PLANE_DTYPES = {np.dtype(np.uint8): "U8", np.dtype(np.uint16): "U16", np.dtype(np.uint32): "U32",
                np.dtype(np.int64): "I64"}


class ContainerError(fmt.FormatError):
    """A container (or original file) cannot be read or fails a check; names the file and tensor."""


@dataclass(frozen=True)
class TensorSpan:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int   # byte range in the data section
    end: int


def parse_safetensors(path: Path) -> tuple[bytes, list[TensorSpan]] | None:
    """The exact header bytes (length prefix included) and tensors in data order, or None when the file
    is not a plain safetensors file whose tensors tile its data section (then it is copied verbatim)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        (n,) = struct.unpack("<Q", head)
        if n > min(fmt.MAX_HEADER_BYTES, size - 8):
            return None
        raw = f.read(n)
    try:
        header = json.loads(raw)
        spans = sorted((TensorSpan(k, v["dtype"], tuple(v["shape"]), *v["data_offsets"])
                        for k, v in header.items() if k != "__metadata__"), key=lambda s: (s.begin, s.end))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        return None
    at = 0
    for s in spans:
        if s.dtype not in DTYPE_SIZES or s.begin != at or s.end - s.begin != np.prod(s.shape, dtype=np.int64) * DTYPE_SIZES[s.dtype]:
            return None
        at = s.end
    if 8 + n + at != size:
        return None
    return head + raw, spans


def _sha(data: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(data)).cast("B")).hexdigest()


def _values(data: np.ndarray, layout: Layout) -> np.ndarray:
    return data.view(layout.uint)


def _float_layouts(coder: str) -> dict[str, Layout]:
    return LAYOUTS if coder == "rans64" else LAYOUTS_V2["fast" if coder == "huff" else "max"]


def _delta_layout(dtype: str, nbytes: int, coder: str) -> Layout:
    if dtype in LAYOUTS:
        return _float_layouts(coder)[dtype]
    return PLAIN[32] if nbytes % 4 == 0 else PLAIN[16] if nbytes % 2 == 0 else PLAIN[8]


def unzip_index(plane: np.ndarray, nchunks: int, nfields: int) -> np.ndarray:
    """The int64 chunk index (chunks, fields, 4) from its zstd-compressed plane; ValueError if corrupt."""
    want = nchunks * nfields * 32
    try:
        raw = zstandard.ZstdDecompressor().decompress(plane.tobytes(), max_output_size=want)
    except zstandard.ZstdError as e:
        raise ValueError(f"chunk index corrupt ({e})") from e
    if len(raw) != want:
        raise ValueError("chunk index has the wrong size")
    return np.frombuffer(raw, np.int64).reshape(nchunks, nfields, 4)


def _coded(enc: Encoded, prefix: str, name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Metadata fields and planes of one coded array (``prefix`` '' or 'part.')."""
    cfg = enc.config
    tables = np.frombuffer(zstandard.ZstdCompressor(level=TABLE_ZSTD_LEVEL).compress(enc.tables.tobytes()), np.uint8)
    meta = {"layout": enc.layout.to_json(), "chunk_values": cfg.chunk_values, "prob_bits": cfg.prob_bits,
            "table_words": int(enc.tables.size), "modes": enc.mode_counts()}
    index = enc.index
    if cfg.coder != "rans64":
        meta["coder"] = cfg.coder
        index = np.frombuffer(zstandard.ZstdCompressor(level=TABLE_ZSTD_LEVEL).compress(enc.index.tobytes()), np.uint8)
        meta["index_zstd"] = True   # 32 bytes a field and chunk are most of a small tensor's overhead
    planes = {fmt.plane_key(name, prefix + "words"): enc.words, fmt.plane_key(name, prefix + "index"): index,
              fmt.plane_key(name, prefix + "tables"): tables}
    return meta, planes


def _encode_checked(values: np.ndarray, layout: Layout, cfg: CodecConfig, threads: int, verify: bool,
                    name: str) -> Encoded:
    enc = codec.encode(values, layout, cfg, threads=threads)
    if verify and not np.array_equal(codec.decode(enc, threads=threads), values):
        raise CodecError(f"tensor '{name}': encoder self-check failed (decoded values differ)")
    return enc


def _nbytes(planes: dict[str, np.ndarray]) -> int:
    return sum(p.nbytes for p in planes.values())


def _grid_planes(span: TensorSpan, values: np.ndarray, cfg: CodecConfig, threads: int, verify: bool):
    """(meta, planes) of the grid coding of a bf16 tensor, or None when it lies on no grid."""
    g = grid.detect(values)
    if g is None:
        return None
    u8, f16 = INTEGERS["U8"], _float_layouts(cfg.coder)["F16"]
    parts = {"codes": (g.codes, u8), "d": (g.d, f16)}
    if g.m is not None:
        parts["m"] = (g.m, f16)
    meta, planes = {"codec": fmt.GRID, "grid": g.kind, "parts": {}}, {}
    for part, (arr, layout) in parts.items():
        pm, pp = _coded(_encode_checked(arr, layout, cfg, threads, verify, span.name), part + ".", span.name)
        meta["parts"][part] = pm
        planes.update(pp)
    planes[fmt.plane_key(span.name, "exc_blocks")] = g.exc_blocks
    planes[fmt.plane_key(span.name, "exc_values")] = g.exc_values.reshape(-1)
    return meta, planes


def encode_tensor(span: TensorSpan, data: np.ndarray, cfg: CodecConfig, threads: int = 1,
                  parent: np.ndarray | None = None, verify: bool = True,
                  grids: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """Metadata and planes for one tensor's bytes ``data`` (uint8). With ``parent`` (same size): XOR delta.
    With ``grids``, a bf16 tensor on per-block affine grids is stored as codes + block parameters when
    that is smaller than float coding."""
    meta = {"dtype": span.dtype, "shape": list(span.shape), "offsets": [span.begin, span.end], "sha256": _sha(data),
            "crc32": crc32(data)}
    if data.size == 0:
        return {**meta, "codec": fmt.EMPTY}, {}
    layout = _delta_layout(span.dtype, data.size, cfg.coder) if parent is not None else \
        _float_layouts(cfg.coder).get(span.dtype, INTEGERS.get(span.dtype))
    if layout is None or data.size % (layout.width // 8):
        return {**meta, "codec": fmt.RAW}, {fmt.plane_key(span.name, "raw"): np.ascontiguousarray(data)}
    values = _values(data, layout)
    if parent is not None:
        meta.update(parent_sha256=_sha(parent))
        values = values ^ _values(parent, layout)
    enc = _encode_checked(values, layout, cfg, threads, verify, span.name)
    fmeta, planes = _coded(enc, "", span.name)
    if grids and parent is None and span.dtype == "BF16" and cfg.coder != "rans64":
        got = _grid_planes(span, values, cfg, threads, verify)
        if got is not None and _nbytes(got[1]) < _nbytes(planes):
            return {**meta, **got[0]}, got[1]
    return {**meta, "codec": fmt.XOR if parent is not None else fmt.RANS, **fmeta}, planes


def write_container(src: Path, dst: Path, rel: str, cfg: CodecConfig, threads: int = 1,
                    parent_of: Callable[[TensorSpan], np.ndarray | None] | None = None,
                    grids: bool = True) -> dict:
    """Encode safetensors file ``src`` into container ``dst``. Returns per-file statistics."""
    parsed = parse_safetensors(src)
    if parsed is None:
        raise ContainerError(f"{src}: not a plain safetensors file")
    header, spans = parsed
    mm = np.memmap(src, dtype=np.uint8, mode="r")
    base = len(header)
    metas, planes = {}, {}
    for s in spans:
        data = np.asarray(mm[base + s.begin: base + s.end])
        parent = parent_of(s) if parent_of else None
        metas[s.name], p = encode_tensor(s, data, cfg, threads, parent, grids=grids)
        planes.update(p)
    blob = st_save(planes, metadata=fmt.container_meta(rel, header, metas))
    atomic_write_bytes(dst, blob)
    del mm
    by_codec: dict[str, int] = {}
    for m in metas.values():
        by_codec[m["codec"]] = by_codec.get(m["codec"], 0) + 1
    return {"tensors": len(spans), "original_bytes": src.stat().st_size, "stored_bytes": len(blob),
            "codecs": by_codec}


class ContainerReader:
    """Opens a container, validates its metadata, decodes tensors (checksummed) and rebuilds the file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._f = safe_open(str(self.path), framework="np")
            metadata = self._f.metadata()
            self._keys = set(self._f.keys())
        except (SafetensorError, OSError, ValueError) as e:
            raise ContainerError(f"{self.path}: unreadable container ({type(e).__name__}: {e})") from e
        doc = fmt.parse_container_meta(metadata, str(self.path))
        self.header = fmt.decode_header(doc.get("original_header"), str(self.path))
        self.file = doc.get("file")
        self.tensors = {n: fmt.check_tensor_meta(n, m, str(self.path)) for n, m in doc["tensors"].items()}
        self.order = sorted(self.tensors, key=lambda n: self.tensors[n]["offsets"][0])
        at = 0
        for n in self.order:
            b, e = self.tensors[n]["offsets"]
            if b != at:
                raise ContainerError(f"{self.path}: tensor '{n}' does not follow its predecessor in the data section")
            at = e
        self.data_bytes = at
        self._available = psutil.virtual_memory().available
        self._spans = self._plane_spans()
        self._mm = None
        if self._spans:   # a plain ndarray over the map (np.memmap slices cost a subclass each)
            with open(self.path, "rb") as f:
                self._mm = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)

    def _plane_spans(self) -> dict[str, tuple[str, tuple, int, int]]:
        """Each plane's dtype, shape and absolute byte range (the container is a plain safetensors file), so
        planes are read as views of one read-only map (no copy); {} where its header is not as expected
        (then planes are read through safe_open)."""
        parsed = parse_safetensors(self.path)
        if parsed is None:
            return {}
        head, spans = parsed
        return {sp.name: (sp.dtype, sp.shape, len(head) + sp.begin, len(head) + sp.end) for sp in spans}

    def _plane(self, name: str, plane: str, dtype) -> np.ndarray:
        key = fmt.plane_key(name, plane)
        if key not in self._keys:
            raise ContainerError(f"{self.path}: tensor '{name}': plane '{plane}' is missing")
        span = self._spans.get(key)
        if span is not None and span[0] == PLANE_DTYPES.get(np.dtype(dtype)):
            shape, b, e = span[1], span[2], span[3]
            arr = self._mm[b:e].view(dtype).reshape(shape)
        else:
            try:
                arr = self._f.get_tensor(key)
            except (SafetensorError, OSError, ValueError) as e:
                raise ContainerError(f"{self.path}: tensor '{name}': plane '{plane}' unreadable ({e})") from e
        if arr.dtype != dtype:
            raise ContainerError(f"{self.path}: tensor '{name}': plane '{plane}' has dtype {arr.dtype}, not {np.dtype(dtype)}")
        return arr if plane.rsplit(".", 1)[-1] == "index" else arr.ravel()

    def _encoded(self, name: str, meta: dict, count: int, part: str = "") -> Encoded:
        layout, cfg = meta["_layout"], meta["_config"]
        need = count * layout.width // 8
        if need > self._available:
            raise ContainerError(f"{self.path}: tensor '{name}' claims {need} bytes, more than the memory available")
        words = self._plane(name, part + "words", np.uint32)
        nchunks = -(-count // cfg.chunk_values)
        zipped = meta.get("index_zstd") is True
        index = self._plane(name, part + "index", np.uint8 if zipped else np.int64)
        if zipped:
            try:
                index = unzip_index(index, nchunks, len(layout.fields))
            except ValueError as e:
                raise ContainerError(f"{self.path}: tensor '{name}': {e}") from e
        if index.shape != (nchunks, len(layout.fields), 4):
            raise ContainerError(f"{self.path}: tensor '{name}': index shape {index.shape} does not fit its size")
        tw = meta.get("table_words")
        if not isinstance(tw, int) or not 0 <= tw <= index.shape[0] * index.shape[1] * ((1 << 16) + 2):
            raise ContainerError(f"{self.path}: tensor '{name}': invalid table size {tw!r}")
        try:
            raw = zstandard.ZstdDecompressor().decompress(self._plane(name, part + "tables", np.uint8).tobytes(),
                                                          max_output_size=2 * tw)
        except zstandard.ZstdError as e:
            raise ContainerError(f"{self.path}: tensor '{name}': frequency tables corrupt ({e})") from e
        if len(raw) != 2 * tw:
            raise ContainerError(f"{self.path}: tensor '{name}': frequency tables have the wrong size")
        return Encoded(words, index, np.frombuffer(raw, np.uint16), layout, count, cfg)

    def coded(self, name: str) -> Encoded | None:
        """The coded planes of a (non-delta) rANS tensor, for on-the-fly decoding; None for other codecs."""
        meta = self.tensors[name]
        if meta["codec"] != fmt.RANS:
            return None
        return self._encoded(name, meta, (meta["offsets"][1] - meta["offsets"][0]) // (meta["_layout"].width // 8))

    def _grid(self, name: str, meta: dict, nbytes: int, threads: int, isa: str | None) -> np.ndarray:
        count = nbytes // 2
        nb = count // grid.BLOCK
        if count % grid.BLOCK:
            raise ContainerError(f"{self.path}: tensor '{name}': {count} values are not whole grid blocks")
        sizes = {"codes": count, "d": nb, "m": nb}
        arrays = {}
        for part, pm in meta["parts"].items():
            enc = self._encoded(name, pm, sizes[part], part + ".")
            want = np.uint8 if part == "codes" else np.uint16
            if pm["_layout"].uint is not want:
                raise ContainerError(f"{self.path}: tensor '{name}': grid part '{part}' has the wrong layout")
            arrays[part] = codec.decode(enc, threads=threads, isa=isa)
        exc = self._plane(name, "exc_blocks", np.int64)
        vals = self._plane(name, "exc_values", np.uint16)
        if vals.size != exc.size * grid.BLOCK or (exc.size and (exc.min() < 0 or exc.max() >= nb)):
            raise ContainerError(f"{self.path}: tensor '{name}': grid exception blocks out of range")
        g = grid.Grid(meta["grid"], arrays["codes"], arrays["d"], arrays.get("m"), exc,
                      vals.reshape(-1, grid.BLOCK))
        return grid.reconstruct(g).view(np.uint8)

    def decode(self, name: str, parent: np.ndarray | None = None, threads: int = 1,
               out: np.ndarray | None = None, isa: str | None = None, verify: bool = True) -> np.ndarray:
        """The original bytes (uint8) of tensor ``name``, sha256-checked. XOR deltas need ``parent``.
        ``out`` (uint8, the tensor's size): decode straight into it (float-coded tensors). ``verify``:
        True = sha256; "crc32" = the (version 2) CRC-32 instead, ~2x cheaper, when the entry has one;
        False = no checksum (the decoders' own stream checks still run)."""
        if name not in self.tensors:
            raise ContainerError(f"{self.path}: no tensor '{name}'")
        meta = self.tensors[name]
        nbytes = meta["offsets"][1] - meta["offsets"][0]
        if out is not None and (out.dtype != np.uint8 or out.size != nbytes):
            raise ValueError(f"tensor '{name}': decode target must be {nbytes} uint8")
        c = meta["codec"]
        try:
            if c == fmt.EMPTY:
                res = np.zeros(0, np.uint8)
            elif c == fmt.RAW:
                res = self._plane(name, "raw", np.uint8)
                if res.size != nbytes:
                    raise ContainerError(f"{self.path}: tensor '{name}': raw plane has {res.size} bytes, not {nbytes}")
            elif c == fmt.GRID:
                res = self._grid(name, meta, nbytes, threads, isa)
            else:
                layout = meta["_layout"]
                enc = self._encoded(name, meta, nbytes // (layout.width // 8))
                target = out.view(layout.uint) if out is not None and c == fmt.RANS else None
                values = codec.decode(enc, threads=threads, out=target, isa=isa)
                if c == fmt.XOR:
                    if parent is None or parent.size != nbytes:
                        raise ContainerError(f"{self.path}: tensor '{name}' is a delta and needs its parent tensor")
                    if _sha(parent) != meta["parent_sha256"]:
                        raise ContainerError(f"tensor '{name}': wrong parent (its checksum differs from the one "
                                             f"this delta was made against)")
                    values ^= parent.view(layout.uint)
                res = values.view(np.uint8)
        except CodecError as e:
            raise ContainerError(f"{self.path}: tensor '{name}': {e}") from e
        self._check(name, res, verify)
        if out is not None and res.ctypes.data != out.ctypes.data:
            out[:] = res
            return out
        return res

    def decode_all(self, outs: dict[str, np.ndarray], threads: int = 1, verify: bool | str = "crc32") -> None:
        """Decode every tensor named in ``outs`` into its buffer (uint8, the tensor's size) and check it, as
        ``decode`` does, but the float-coded ones all at once (``codec.decode_many``: one call per thread
        for the whole file) and the checksums on ``threads`` threads."""
        coded, rest = [], []
        for name, buf in outs.items():
            meta = self.tensors[name]
            nbytes = meta["offsets"][1] - meta["offsets"][0]
            if buf.dtype != np.uint8 or buf.size != nbytes:
                raise ValueError(f"tensor '{name}': decode target must be {nbytes} uint8")
            (coded if meta["codec"] == fmt.RANS and nbytes else rest).append(name)
        items = []
        for name in coded:
            meta = self.tensors[name]
            layout = meta["_layout"]
            items.append((self._encoded(name, meta, outs[name].size // (layout.width // 8)), outs[name].view(layout.uint)))
        try:
            codec.decode_many(items, threads=threads)
        except codec.ItemError as e:
            raise ContainerError(f"{self.path}: tensor '{coded[e.item]}': {e}") from e
        for name in rest:
            self.decode(name, threads=threads, out=outs[name], verify=verify)
        if verify and coded:
            def check(name: str) -> None:
                self._check(name, outs[name], verify)
            if threads > 1 and len(coded) > 1:
                list(codec.pool(threads).map(check, coded))
            else:
                for name in coded:
                    check(name)

    def _check(self, name: str, res: np.ndarray, verify: bool | str) -> None:
        meta = self.tensors[name]
        crc = meta.get("crc32")
        if verify == "crc32" and isinstance(crc, int):
            if crc32(res) != crc:
                raise ContainerError(f"{self.path}: tensor '{name}': CRC-32 mismatch after decoding (corrupt data)")
        elif verify and _sha(res) != meta["sha256"]:
            raise ContainerError(f"{self.path}: tensor '{name}': checksum mismatch after decoding (corrupt data)")

    def rebuild(self, sink: BinaryIO, parent_of: Callable[[str], np.ndarray | None] | None = None,
                threads: int = 1) -> None:
        """Write the original file to ``sink`` (anything with ``write``), tensor by tensor."""
        sink.write(self.header)
        for name in self.order:
            sink.write(memoryview(self.decode(name, parent_of(name) if parent_of else None, threads)))
