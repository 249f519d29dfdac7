"""Export: write what leanlm makes in the formats other engines load (GGUF, compressed-tensors, HF dense).

``export(src, to, out, options)`` is the one public verb. ``TARGETS`` is the one place that knows which
module writes which ``--to`` format; entries resolve lazily so ``leanlm --help`` imports none of them.
Each target function has the signature ``fn(src: str, out: Path, options: dict) -> dict`` and returns a
JSON-able summary of what it wrote (files, bytes, per-tensor types, the config that made it).
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

TARGETS: dict[str, str] = {
    "gguf": "leanlm.export.gguf:export_cli",
    "compressed-tensors": "leanlm.export.ctensors:export_cli",
    "hf": "leanlm.export.hf:export_cli",
}
TARGET_NAMES = list(TARGETS)


def resolve_target(to: str) -> Callable:
    if to not in TARGETS:
        raise ValueError(f"unknown export target '{to}'; choose one of {TARGET_NAMES}")
    mod, fn = TARGETS[to].split(":")
    try:
        module = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name != mod:
            raise
        raise NotImplementedError(f"export target '{to}' is not available in this build") from e
    return getattr(module, fn)


def export(src: str, to: str, out: str | Path, options: dict | None = None) -> dict:
    """Export model ``src`` (any spec, HF dir or leanlm artifact) to format ``to`` at ``out``."""
    options = dict(options or {})
    options["to"] = to
    return resolve_target(to)(src, Path(out), options)
