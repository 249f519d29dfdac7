"""Delta mode: a child checkpoint stored as the lossless difference from its parent.

Each child tensor whose parent has a tensor of the same name, dtype and shape is stored as the XOR of
the two bit patterns, entropy coded with the same field-split rANS codec (unchanged weights XOR to zero,
which costs almost nothing; changed ones keep sign and exponent mostly equal). Tensors the parent lacks
are stored whole; other files identical to the parent's are referenced, not copied. Decoding checks the
parent's file checksums first and refuses a wrong parent with a clear error, then every child checksum.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ...fileio import sha256_file
from . import format as fmt
from .container import ContainerError, TensorSpan, parse_safetensors
from .store import LosslessConfig, build, read_manifest, restore, source_files

log = logging.getLogger(__name__)


class DeltaParentError(ValueError):
    """The parent given to ``decompress_delta`` is not the one the delta was made from."""


class ParentIndex:
    """Every tensor of a parent directory by name, readable as bytes without loading the files."""

    def __init__(self, parent: str | Path):
        self.root, rels = source_files(Path(parent))
        self.files: dict[str, Path] = {rel: self.root / rel for rel in rels}
        self.tensors: dict[str, tuple[str, TensorSpan, int]] = {}
        self._maps: dict[str, np.memmap] = {}
        for rel in rels:
            if not rel.endswith(".safetensors"):
                continue
            parsed = parse_safetensors(self.root / rel)
            if parsed is None:
                continue
            header, spans = parsed
            for s in spans:
                self.tensors.setdefault(s.name, (rel, s, len(header)))

    def _bytes(self, name: str) -> np.ndarray:
        rel, s, base = self.tensors[name]
        if rel not in self._maps:
            self._maps[rel] = np.memmap(self.files[rel], dtype=np.uint8, mode="r")
        return np.asarray(self._maps[rel][base + s.begin: base + s.end])

    def matching(self, span: TensorSpan) -> np.ndarray | None:
        """The parent's bytes for a child tensor of the same name, dtype and shape (else None)."""
        hit = self.tensors.get(span.name)
        if hit is None or hit[1].dtype != span.dtype or hit[1].shape != span.shape:
            return None
        return self._bytes(span.name)

    def by_name(self, name: str) -> np.ndarray | None:
        return self._bytes(name) if name in self.tensors else None


def compress_delta(child: str | Path, parent: str | Path, out: Path, force: bool = False,
                   cfg: LosslessConfig = LosslessConfig()) -> dict:
    """Store model directory ``child`` as a delta against ``parent`` in ``out``. Returns a summary."""
    pidx = ParentIndex(parent)
    parent_files = {rel: sha256_file(p) for rel, p in sorted(pidx.files.items())}
    manifest = build(Path(child), Path(out), cfg, overwrite=force, kind="delta", parent_tensor=pidx.matching,
                     parent_file=lambda rel, sha: parent_files.get(rel) == sha,
                     extra={"parent": {"path": str(parent), "files": parent_files}})
    codecs: dict[str, int] = {}
    for e in manifest["files"]:
        for k, v in e.get("codecs", {}).items():
            codecs[k] = codecs.get(k, 0) + v
    t = manifest["totals"]
    return {"output": str(out), "parent": str(parent), "child_bytes": t["original_bytes"],
            "stored_bytes": t["stored_bytes"], "ratio": t["stored_bytes"] / max(1, t["original_bytes"]),
            "weights_ratio": t["weights_ratio"], "tensor_codecs": codecs, "seconds": t["seconds"]}


def check_parent(manifest: dict, pidx: ParentIndex) -> None:
    """The parent's weight files, and the files the delta references, must be the recorded ones (other
    files in the parent directory, e.g. results written there later, do not matter)."""
    referenced = {e["path"] for e in manifest["files"] if e["store"] == "parent"}
    for rel, sha in manifest.get("parent", {}).get("files", {}).items():
        fmt.check_relpath(rel, "delta parent")
        if not (rel.endswith(".safetensors") or rel in referenced):
            continue
        if rel not in pidx.files:
            raise DeltaParentError(f"{pidx.root} is not the parent this delta was made from: it lacks '{rel}'")
        if sha256_file(pidx.files[rel]) != sha:
            raise DeltaParentError(f"{pidx.root} is not the parent this delta was made from: '{rel}' differs "
                                   f"(expected sha256 {sha[:12]}...)")


def decompress_delta(path: Path, parent: str | Path, out: Path, force: bool = False,
                     threads: int = 0) -> dict:
    """Rebuild the child directory from delta ``path`` and its ``parent``, byte-identical and checked."""
    manifest = read_manifest(Path(path), "delta")
    pidx = ParentIndex(parent)
    check_parent(manifest, pidx)
    try:
        summary = restore(Path(path), Path(out), force, threads or LosslessConfig().n_threads(),
                          parent_tensor=pidx.by_name, parent_root=pidx.root, kind="delta")
    except ContainerError as e:
        if "wrong parent" in str(e):
            raise DeltaParentError(str(e)) from e
        raise
    return {**summary, "parent": str(parent)}
