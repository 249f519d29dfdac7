"""Build a C source of ours into a shared library once, cached under ``<leanlm cache>/ext/`` by the hash of
the source, flags and compiler, written atomically (several processes may build at once)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


class BuildError(RuntimeError):
    """No C compiler, or it failed on the source."""


def compiler() -> str | None:
    for cc in (os.environ.get("CC"), "gcc", "cc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def build_library(source: Path, flags: tuple[str, ...], cc: str | None, force: bool = False) -> Path:
    """The path of ``source`` compiled with ``cc`` and ``flags`` (built now unless cached)."""
    from .models.specs import cache_dir

    if cc is None:
        raise BuildError("no C compiler found (set CC, or install gcc)")
    src = source.read_bytes()
    key = hashlib.sha256(src + " ".join(flags).encode() + cc.encode()).hexdigest()[:16]
    out = cache_dir() / "ext" / f"{source.stem}-{key}.so"
    if out.is_file() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *flags, str(source), "-o", tmp], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise BuildError(f"{cc} failed to build {source.name}: {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
