"""Compression: lossless (bit-exact codec), quant (integer kernels), lowrank (decompositions), recipes."""
from __future__ import annotations

from pathlib import Path


def compress(spec: str, method: str, out: str | Path, options: dict | None = None) -> dict:
    """Compress model ``spec`` with ``method`` into directory ``out``; returns a summary dict."""
    from .methods import resolve_method

    options = dict(options or {})
    options["method"] = method
    return resolve_method(method)(spec, Path(out), options)
