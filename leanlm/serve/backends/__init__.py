"""Backends: step-level engines the scheduler drives. The table names each one's loader (lazy imports, so
a missing optional engine costs nothing until it is asked for)."""
from __future__ import annotations

import importlib

BACKENDS: dict[str, str] = {
    "torch": "leanlm.serve.backends.torch_backend:load_torch",
    "llama_cpp": "leanlm.serve.backends.llama_cpp:load_llama_cpp",
    # A vLLM backend (GPU) is one more entry: vLLM schedules its own batches, so it would implement the
    # scheduler's Engine interface (submit / cancel) instead of the step interface of base.Backend.
}


def backend_loader(name: str):
    if name not in BACKENDS:
        raise ValueError(f"unknown backend '{name}'; known: {sorted(BACKENDS)}")
    mod, fn = BACKENDS[name].split(":")
    return getattr(importlib.import_module(mod), fn)
