"""The leanlm lossless on-disk format: the one place that specifies it (versioned, checked on read).

An output directory holds:

* ``leanlm.json`` - the manifest: ``format`` (= ``FORMAT``), ``format_version``, ``kind`` (``model`` or
  ``delta``), the config that made it, and one entry per original file: ``path`` (relative), ``size``,
  ``sha256`` and how it is stored: ``safetensors`` (re-encoded into a container), ``copy`` (verbatim under
  ``data/``) or ``parent`` (delta only: identical to the parent's file of the same path).
* ``data/<path minus .safetensors>.lossless.safetensors`` - a container per original safetensors file: an
  ordinary safetensors file (inspect it with any safetensors reader) whose tensors are the coded planes of
  each original tensor, named ``<tensor>:words`` (uint32 coded words), ``<tensor>:index`` (int64 chunk index),
  ``<tensor>:tables`` (uint8, zstd-compressed uint16 frequency / code-length tables) and ``<tensor>:raw``
  (uint8, dtypes passed through). Its ``__metadata__`` holds ``CONTAINER_KEY`` -> JSON: magic, format
  version, the original file's header bytes (base64, so the file is rebuilt byte for byte) and per tensor:
  dtype, shape, byte range in the original data section, sha256 of the original bytes, and the codec with
  its parameters.

Version 2 (written now; version 1 still reads): the tensor entries gain ``crc32`` (of the original bytes,
the cheap check ``load_file`` uses) and ``coder`` (``rans32`` for mode
``max``, ``huff`` for ``fast``; absent = version 1's ``rans64``), and a codec ``grid`` (a bf16 tensor on
per-block affine grids, see ``grid``): parts ``codes``, ``d`` and ``m`` each coded like a tensor, with
planes ``<tensor>:<part>.words`` / ``.index`` / ``.tables`` and their own entry under ``parts``, plus
``<tensor>:exc_blocks`` (int64) and ``<tensor>:exc_values`` (uint16, 32 per block) for blocks that fit no
grid. The container document is stored zstd-compressed: ``{"magic", "format_version", "zdoc": base64}``.
Entries (or grid parts) with ``"index_zstd": true`` store their chunk index zstd-compressed (uint8 plane;
written for every version-2 coder since the second codec release: the index is most of a small tensor's
overhead); without the key it is the raw int64 plane, as before.
"""
from __future__ import annotations

import base64
import json
import math
from pathlib import PurePosixPath

import zstandard

from .codec import CodecConfig
from .layout import DTYPE_SIZES, Layout

FORMAT = "leanlm.lossless"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MAGIC = "LEANLM-LOSSLESS"
CONTAINER_KEY = "leanlm.lossless"
MANIFEST = "leanlm.json"
DATA_DIR = "data"
CONTAINER_SUFFIX = ".lossless.safetensors"

# Codecs of one tensor.
RANS = "rans"        # field-split rANS (layout per dtype)
XOR = "xor-rans"     # delta: XOR with the parent tensor's bits, then field-split rANS
RAW = "raw"          # stored as is (dtypes without a float layout)
EMPTY = "empty"      # zero elements
GRID = "grid"        # bf16 on per-block affine grids: codes + block parameters (version 2)
CODECS = (RANS, XOR, RAW, EMPTY, GRID)
CODERS = ("rans64", "rans32", "huff")
GRID_PARTS = {"q4_1": ("codes", "d", "m"), "q8_0": ("codes", "d")}
PLANES = ("words", "index", "tables", "raw")

# Bounds that keep a lying header from asking for unbounded work or memory.
MAX_HEADER_BYTES = 100 << 20     # safetensors' own limit
MAX_TENSOR_BYTES = 1 << 40
MAX_DIMS = 16


class FormatError(ValueError):
    """A file does not follow this format; the message names the file and tensor."""


def plane_key(tensor: str, plane: str) -> str:
    return f"{tensor}:{plane}"


def container_path(rel: str) -> str:
    """Where the container for original file ``rel`` lives inside the output directory."""
    p = PurePosixPath(rel)
    return str(PurePosixPath(DATA_DIR) / p.with_name(p.name.removesuffix(".safetensors") + CONTAINER_SUFFIX))


def copy_path(rel: str) -> str:
    return str(PurePosixPath(DATA_DIR) / rel)


def check_relpath(rel: object, what: str) -> str:
    """A manifest path must stay inside the directory (no absolute paths, no '..')."""
    if not isinstance(rel, str) or not rel:
        raise FormatError(f"{what}: path {rel!r} is not a non-empty string")
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise FormatError(f"{what}: path {rel!r} leaves the output directory")
    return rel


def encode_header(header: bytes) -> str:
    return base64.b64encode(header).decode("ascii")


def decode_header(text: object, where: str) -> bytes:
    if not isinstance(text, str) or len(text) > MAX_HEADER_BYTES * 4 // 3 + 8:
        raise FormatError(f"{where}: original header missing or too large")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as e:
        raise FormatError(f"{where}: original header is not valid base64 ({e})") from e


def container_meta(rel: str, header: bytes, tensors: dict[str, dict]) -> dict[str, str]:
    body = json.dumps({"file": rel, "original_header": encode_header(header), "tensors": tensors},
                      separators=(",", ":")).encode()
    doc = {"magic": MAGIC, "format_version": FORMAT_VERSION,
           "zdoc": base64.b64encode(zstandard.ZstdCompressor(level=19, write_checksum=True).compress(body)).decode("ascii")}
    return {CONTAINER_KEY: json.dumps(doc, separators=(",", ":"))}


def parse_container_meta(metadata: dict | None, where: str) -> dict:
    """The container document from a safetensors ``__metadata__``, checked for magic and version."""
    if not metadata or CONTAINER_KEY not in metadata:
        raise FormatError(f"{where}: not a leanlm lossless container (no '{CONTAINER_KEY}' metadata)")
    try:
        doc = json.loads(metadata[CONTAINER_KEY])
    except (json.JSONDecodeError, TypeError) as e:
        raise FormatError(f"{where}: container metadata is not valid JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("magic") != MAGIC:
        raise FormatError(f"{where}: bad magic {doc.get('magic') if isinstance(doc, dict) else doc!r}")
    if doc.get("format_version") not in READABLE_VERSIONS:
        raise FormatError(f"{where}: format version {doc.get('format_version')} is not one this leanlm reads "
                          f"{READABLE_VERSIONS} (written by another leanlm version)")
    if "zdoc" in doc:
        try:
            body = zstandard.ZstdDecompressor().decompress(base64.b64decode(doc["zdoc"], validate=True),
                                                           max_output_size=4 * MAX_HEADER_BYTES)
            doc.update(json.loads(body))
        except (ValueError, TypeError, zstandard.ZstdError, json.JSONDecodeError) as e:
            raise FormatError(f"{where}: compressed container document is corrupt ({e})") from e
    if not isinstance(doc.get("tensors"), dict):
        raise FormatError(f"{where}: container lists no tensors")
    return doc


def doc_version(meta: dict) -> int:
    return 2 if "coder" in meta else 1


def coded_meta(meta: dict, what: str, version: int) -> dict:
    """Parse a coded entry's layout and codec parameters into ``_layout`` / ``_config``."""
    try:
        coder = meta.get("coder", "rans64") if version >= 2 else "rans64"
        if coder not in CODERS:
            raise ValueError(f"unknown coder {coder!r}")
        meta["_layout"] = Layout.from_json(meta["layout"])
        meta["_config"] = CodecConfig(chunk_values=meta["chunk_values"], prob_bits=meta["prob_bits"], coder=coder)
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{what}: invalid codec parameters ({e})") from e
    return meta


def check_tensor_meta(name: str, meta: object, where: str) -> dict:
    """Validate one tensor entry; returns it. Every number a decoder will trust is bounded here."""
    what = f"{where}: tensor '{name}'"
    if not isinstance(meta, dict):
        raise FormatError(f"{what}: entry is not an object")
    dtype, shape, codec = meta.get("dtype"), meta.get("shape"), meta.get("codec")
    if dtype not in DTYPE_SIZES:
        raise FormatError(f"{what}: unknown dtype {dtype!r}")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise FormatError(f"{what}: invalid shape {shape!r}")
    nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
    if nbytes > MAX_TENSOR_BYTES:
        raise FormatError(f"{what}: {nbytes} bytes exceeds the {MAX_TENSOR_BYTES}-byte limit")
    offs = meta.get("offsets")
    if (not isinstance(offs, list) or len(offs) != 2 or not all(isinstance(o, int) for o in offs)
            or offs[0] < 0 or offs[1] - offs[0] != nbytes):
        raise FormatError(f"{what}: offsets {offs!r} do not match {nbytes} bytes")
    sha = meta.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64:
        raise FormatError(f"{what}: missing sha256")
    if codec not in CODECS or (codec == EMPTY) != (nbytes == 0):
        raise FormatError(f"{what}: codec {codec!r} does not fit {nbytes} bytes")
    if codec in (RANS, XOR):
        coded_meta(meta, what, doc_version(meta))
        if nbytes % (meta["_layout"].width // 8):
            raise FormatError(f"{what}: {nbytes} bytes is not a whole number of {meta['_layout'].width}-bit values")
    if codec == GRID:
        kind = meta.get("grid")
        parts = meta.get("parts")
        if dtype != "BF16" or kind not in GRID_PARTS or not isinstance(parts, dict) or set(parts) != set(GRID_PARTS[kind]):
            raise FormatError(f"{what}: invalid grid entry (kind {kind!r})")
        for part in parts.values():
            if not isinstance(part, dict):
                raise FormatError(f"{what}: invalid grid part")
            coded_meta(part, what, 2)
    if codec == XOR and not (isinstance(meta.get("parent_sha256"), str) and len(meta["parent_sha256"]) == 64):
        raise FormatError(f"{what}: delta entry lacks the parent tensor's sha256")
    return meta
