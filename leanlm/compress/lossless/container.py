"""Reader and writer of lossless containers (one per original safetensors file; layout in ``format``).

Orchestration only: parse an original safetensors file keeping its exact header bytes, encode each tensor
with the codec (or XOR against a parent tensor), write the planes with safetensors; read them back with
every field validated, decode, and check each tensor's sha256 before anything is returned.
"""
from __future__ import annotations

import hashlib
import json
import logging
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
from . import codec
from . import format as fmt
from .codec import CodecConfig, CodecError, Encoded
from .layout import DTYPE_SIZES, INTEGERS, LAYOUTS, PLAIN, Layout

log = logging.getLogger(__name__)
TABLE_ZSTD_LEVEL = 19


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


def _delta_layout(dtype: str, nbytes: int) -> Layout:
    if dtype in LAYOUTS:
        return LAYOUTS[dtype]
    return PLAIN[32] if nbytes % 4 == 0 else PLAIN[16] if nbytes % 2 == 0 else PLAIN[8]


def encode_tensor(span: TensorSpan, data: np.ndarray, cfg: CodecConfig, threads: int = 1,
                  parent: np.ndarray | None = None, verify: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """Metadata and planes for one tensor's bytes ``data`` (uint8). With ``parent`` (same size): XOR delta."""
    meta = {"dtype": span.dtype, "shape": list(span.shape), "offsets": [span.begin, span.end], "sha256": _sha(data)}
    if data.size == 0:
        return {**meta, "codec": fmt.EMPTY}, {}
    layout = _delta_layout(span.dtype, data.size) if parent is not None else \
        LAYOUTS.get(span.dtype, INTEGERS.get(span.dtype))
    if layout is None or data.size % (layout.width // 8):
        return {**meta, "codec": fmt.RAW}, {fmt.plane_key(span.name, "raw"): np.ascontiguousarray(data)}
    values = _values(data, layout)
    if parent is not None:
        meta.update(parent_sha256=_sha(parent))
        values = values ^ _values(parent, layout)
    enc = codec.encode(values, layout, cfg, threads=threads)
    if verify and not np.array_equal(codec.decode(enc, threads=threads), values):
        raise CodecError(f"tensor '{span.name}': encoder self-check failed (decoded values differ)")
    tables = np.frombuffer(zstandard.ZstdCompressor(level=TABLE_ZSTD_LEVEL).compress(enc.tables.tobytes()), np.uint8)
    meta.update(codec=fmt.XOR if parent is not None else fmt.RANS, layout=layout.to_json(),
                chunk_values=cfg.chunk_values, prob_bits=cfg.prob_bits, table_words=int(enc.tables.size),
                modes=enc.mode_counts())
    planes = {fmt.plane_key(span.name, "words"): enc.words, fmt.plane_key(span.name, "index"): enc.index,
              fmt.plane_key(span.name, "tables"): tables}
    return meta, planes


def write_container(src: Path, dst: Path, rel: str, cfg: CodecConfig, threads: int = 1,
                    parent_of: Callable[[TensorSpan], np.ndarray | None] | None = None) -> dict:
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
        metas[s.name], p = encode_tensor(s, data, cfg, threads, parent)
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

    def _plane(self, name: str, plane: str, dtype) -> np.ndarray:
        key = fmt.plane_key(name, plane)
        if key not in self._keys:
            raise ContainerError(f"{self.path}: tensor '{name}': plane '{plane}' is missing")
        try:
            arr = self._f.get_tensor(key)
        except (SafetensorError, OSError, ValueError) as e:
            raise ContainerError(f"{self.path}: tensor '{name}': plane '{plane}' unreadable ({e})") from e
        if arr.dtype != dtype:
            raise ContainerError(f"{self.path}: tensor '{name}': plane '{plane}' has dtype {arr.dtype}, not {np.dtype(dtype)}")
        return arr.ravel() if plane != "index" else arr

    def _encoded(self, name: str, meta: dict, count: int) -> Encoded:
        layout, cfg = meta["_layout"], meta["_config"]
        need = count * layout.width // 8
        if need > psutil.virtual_memory().available:
            raise ContainerError(f"{self.path}: tensor '{name}' claims {need} bytes, more than the memory available")
        words, index = self._plane(name, "words", np.uint32), self._plane(name, "index", np.int64)
        nchunks = -(-count // cfg.chunk_values)
        if index.shape != (nchunks, len(layout.fields), 4):
            raise ContainerError(f"{self.path}: tensor '{name}': index shape {index.shape} does not fit its size")
        tw = meta.get("table_words")
        if not isinstance(tw, int) or not 0 <= tw <= index.shape[0] * index.shape[1] * ((1 << 16) + 2):
            raise ContainerError(f"{self.path}: tensor '{name}': invalid table size {tw!r}")
        try:
            raw = zstandard.ZstdDecompressor().decompress(self._plane(name, "tables", np.uint8).tobytes(),
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

    def decode(self, name: str, parent: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
        """The original bytes (uint8) of tensor ``name``, sha256-checked. XOR deltas need ``parent``."""
        if name not in self.tensors:
            raise ContainerError(f"{self.path}: no tensor '{name}'")
        meta = self.tensors[name]
        nbytes = meta["offsets"][1] - meta["offsets"][0]
        c = meta["codec"]
        if c == fmt.EMPTY:
            out = np.zeros(0, np.uint8)
        elif c == fmt.RAW:
            out = self._plane(name, "raw", np.uint8)
            if out.size != nbytes:
                raise ContainerError(f"{self.path}: tensor '{name}': raw plane has {out.size} bytes, not {nbytes}")
        else:
            layout = meta["_layout"]
            enc = self._encoded(name, meta, nbytes // (layout.width // 8))
            try:
                values = codec.decode(enc, threads=threads)
            except CodecError as e:
                raise ContainerError(f"{self.path}: tensor '{name}': {e}") from e
            if c == fmt.XOR:
                if parent is None or parent.size != nbytes:
                    raise ContainerError(f"{self.path}: tensor '{name}' is a delta and needs its parent tensor")
                if _sha(parent) != meta["parent_sha256"]:
                    raise ContainerError(f"tensor '{name}': wrong parent (its checksum differs from the one "
                                         f"this delta was made against)")
                values ^= parent.view(layout.uint)
            out = values.view(np.uint8)
        if _sha(out) != meta["sha256"]:
            raise ContainerError(f"{self.path}: tensor '{name}': checksum mismatch after decoding (corrupt data)")
        return out

    def rebuild(self, sink: BinaryIO, parent_of: Callable[[str], np.ndarray | None] | None = None,
                threads: int = 1) -> None:
        """Write the original file to ``sink`` (anything with ``write``), tensor by tensor."""
        sink.write(self.header)
        for name in self.order:
            sink.write(memoryview(self.decode(name, parent_of(name) if parent_of else None, threads)))
