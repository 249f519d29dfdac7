"""Directories in and out: compress a model directory (or one safetensors file), restore it, verify it.

Every original file is listed in the manifest with its size and sha256. Safetensors files become
containers; other files are copied verbatim (or, in a delta, referenced from the parent when identical).
Everything is written into a temporary directory that is renamed into place only when complete.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ...config import require, to_dict
from ...fileio import atomic_directory, atomic_write_json, sha256_file
from . import format as fmt
from .codec import CodecConfig
from .container import ContainerError, ContainerReader, TensorSpan, parse_safetensors, write_container

log = logging.getLogger(__name__)
SKIP_DIRS = {"__pycache__", ".git"}


MODE_CODERS = {"max": "rans32", "fast": "huff"}


@dataclass(frozen=True)
class LosslessConfig:
    mode: str = "max"             # max: rANS (best ratio); fast: Huffman lookup tables (fastest decode)
    chunk_values: int = 1 << 18   # values per independently decodable chunk
    prob_bits: int = 14           # rANS frequency precision
    min_gain: float = 0.02        # code a field chunk only when that saves this fraction of its raw size
    threads: int = 0              # encode/decode threads (0 = all cores)
    grids: bool = True            # store bf16 tensors on per-block affine grids as codes + block parameters

    def __post_init__(self) -> None:
        require(self.mode in MODE_CODERS, f"mode {self.mode!r} not one of {sorted(MODE_CODERS)}")
        self.codec()  # validates chunk_values / prob_bits / min_gain
        require(self.threads >= 0, f"threads must be >= 0, got {self.threads}")

    def codec(self) -> CodecConfig:
        return CodecConfig(chunk_values=self.chunk_values, prob_bits=self.prob_bits, min_gain=self.min_gain,
                           coder=MODE_CODERS[self.mode])

    def n_threads(self) -> int:
        return self.threads or os.cpu_count() or 1


def source_files(src: Path) -> tuple[Path, list[str]]:
    """(root, relative paths) of a source: a directory (recursive) or a single file."""
    src = Path(src)
    if src.is_file():
        return src.parent, [src.name]
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such file or directory")
    rels = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for f in sorted(filenames):
            rels.append(Path(dirpath, f).relative_to(src).as_posix())
    return src, rels


def read_manifest(path: Path, kind: str | None = None) -> dict:
    mpath = Path(path) / fmt.MANIFEST
    try:
        doc = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise fmt.FormatError(f"{mpath}: cannot read the manifest ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != fmt.FORMAT:
        raise fmt.FormatError(f"{mpath}: not a {fmt.FORMAT} directory (format {doc.get('format') if isinstance(doc, dict) else None!r})")
    if doc.get("format_version") not in fmt.READABLE_VERSIONS:
        raise fmt.FormatError(f"{mpath}: format version {doc.get('format_version')} is not one this leanlm "
                              f"reads {fmt.READABLE_VERSIONS} (written by another leanlm version)")
    if kind and doc.get("kind") != kind:
        raise fmt.FormatError(f"{mpath}: holds a '{doc.get('kind')}' artifact, not a '{kind}'")
    files = doc.get("files")
    if not isinstance(files, list):
        raise fmt.FormatError(f"{mpath}: lists no files")
    for e in files:
        if not isinstance(e, dict) or e.get("store") not in ("safetensors", "copy", "parent"):
            raise fmt.FormatError(f"{mpath}: invalid file entry {e!r}")
        fmt.check_relpath(e.get("path"), str(mpath))
    return doc


def build(src: Path, out: Path, cfg: LosslessConfig, overwrite: bool, kind: str = "model",
          parent_tensor: Callable[[TensorSpan], np.ndarray | None] | None = None,
          parent_file: Callable[[str, str], bool] | None = None, extra: dict | None = None) -> dict:
    """Write the compressed form of ``src`` into ``out``. Returns the manifest."""
    t0 = time.perf_counter()
    root, rels = source_files(src)
    entries, totals = [], {"original_bytes": 0, "stored_bytes": 0}
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for rel in rels:
            path = root / rel
            entry = {"path": rel, "size": path.stat().st_size, "sha256": sha256_file(path)}
            if rel.endswith(".safetensors") and parse_safetensors(path) is not None:
                stats = write_container(path, tmp / fmt.container_path(rel), rel, cfg.codec(), cfg.n_threads(),
                                        parent_tensor, grids=cfg.grids)
                entry.update(store="safetensors", container=fmt.container_path(rel), **stats)
            elif parent_file is not None and parent_file(rel, entry["sha256"]):
                entry.update(store="parent", stored_bytes=0)
            else:
                dst = tmp / fmt.copy_path(rel)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dst)
                entry.update(store="copy", stored_bytes=entry["size"])
            totals["original_bytes"] += entry["size"]
            totals["stored_bytes"] += entry["stored_bytes"]
            entries.append(entry)
        weights = [e for e in entries if e["store"] == "safetensors"]
        totals["weights_original_bytes"] = sum(e["original_bytes"] for e in weights)
        totals["weights_stored_bytes"] = sum(e["stored_bytes"] for e in weights)
        totals["weights_ratio"] = (totals["weights_stored_bytes"] / totals["weights_original_bytes"]
                                   if weights else None)
        totals["seconds"] = round(time.perf_counter() - t0, 3)
        manifest = {"format": fmt.FORMAT, "format_version": fmt.FORMAT_VERSION, "kind": kind,
                    "config": to_dict(cfg), "source": str(src), **(extra or {}), "totals": totals,
                    "files": entries}
        atomic_write_json(tmp / fmt.MANIFEST, manifest)
    return manifest


class _HashingSink:
    def __init__(self, f=None):
        self.f, self.h = f, hashlib.sha256()

    def write(self, data) -> None:
        self.h.update(data)
        if self.f is not None:
            self.f.write(data)


def _check(entry: dict, got: str, what: str) -> None:
    if got != entry["sha256"]:
        raise ContainerError(f"{what}: checksum mismatch for '{entry['path']}' (expected {entry['sha256'][:12]}..., "
                             f"got {got[:12]}...)")


def restore_file(path: Path, entry: dict, sink, threads: int, parent_tensor=None, parent_root: Path | None = None) -> None:
    """Stream one original file into ``sink`` (``write``), verifying every checksum."""
    store = entry["store"]
    if store == "safetensors":
        reader = ContainerReader(path / fmt.check_relpath(entry.get("container"), str(path)))
        if reader.file != entry["path"]:
            raise ContainerError(f"{reader.path}: holds '{reader.file}', the manifest expects '{entry['path']}'")
        hs = _HashingSink(sink)
        reader.rebuild(hs, parent_tensor, threads)
        _check(entry, hs.h.hexdigest(), str(reader.path))
        return
    src = path / fmt.copy_path(entry["path"]) if store == "copy" else Path(parent_root) / entry["path"]
    hs = _HashingSink(sink)
    try:
        with open(src, "rb") as f:
            while block := f.read(1 << 20):
                hs.write(block)
    except OSError as e:
        raise ContainerError(f"{src}: cannot read stored file ({e})") from e
    _check(entry, hs.h.hexdigest(), str(src))


def restore(path: Path, output: Path, overwrite: bool, threads: int, parent_tensor=None,
            parent_root: Path | None = None, kind: str | None = "model") -> dict:
    manifest = read_manifest(path, kind)
    t0 = time.perf_counter()
    with atomic_directory(output, overwrite=overwrite) as tmp:
        for entry in manifest["files"]:
            dst = tmp / entry["path"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            with open(dst, "wb") as f:
                restore_file(path, entry, f, threads, parent_tensor, parent_root)
    return {"output": str(output), "files": len(manifest["files"]),
            "bytes": sum(e["size"] for e in manifest["files"]), "seconds": round(time.perf_counter() - t0, 3),
            "checksums": "ok"}


def verify(path: Path, against: Path | None, threads: int) -> dict:
    """Decode everything without writing; compare to ``against`` (a directory) when given."""
    manifest = read_manifest(path, "model")
    result = {"ok": True, "files_checked": 0, "files_ok": 0, "tensors_checked": 0, "tensors_ok": 0, "errors": []}
    for entry in manifest["files"]:
        result["files_checked"] += 1
        if entry["store"] == "safetensors":
            n = entry.get("tensors", 0)
            result["tensors_checked"] += n
        try:
            restore_file(path, entry, None, threads)
            if against is not None:
                other = Path(against) / entry["path"]
                if not other.is_file() or sha256_file(other) != entry["sha256"]:
                    raise ContainerError(f"'{entry['path']}' differs from {other}")
        except (fmt.FormatError, OSError) as e:
            result["ok"] = False
            result["errors"].append(str(e))
            continue
        result["files_ok"] += 1
        if entry["store"] == "safetensors":
            result["tensors_ok"] += n
    if against is not None:
        _, rels = source_files(Path(against))
        missing = sorted(set(rels) - {e["path"] for e in manifest["files"]})
        if missing:
            result["ok"] = False
            result["errors"].append(f"files in {against} missing from the artifact: {missing[:5]}")
    return result
