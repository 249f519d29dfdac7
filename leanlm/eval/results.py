"""The result document every measuring command writes (schema version, spec, protocol, package, machine)."""
from __future__ import annotations

import os
import platform
import time

import torch

SCHEMA_VERSION = 1
REQUIRED_KEYS = ("schema_version", "kind", "model", "protocol", "leanlm_version", "machine", "created", "results")


def machine_info() -> dict:
    cpu, flags = platform.processor() or "", set()
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), cpu)
        flags = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    except OSError:
        pass
    # the widest vector ISA: same-named VMs of this project have come with and without AVX-512
    isa = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "other" if flags else None
    try:
        import psutil

        mem = psutil.virtual_memory().total
    except ImportError:
        mem = None
    return {"cpu": cpu, "isa": isa, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "memory_bytes": mem,
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available() and torch.cuda.get_device_name(0) or None}


def document(kind: str, model: dict, protocol: dict, results: dict) -> dict:
    from .. import __version__

    return {"schema_version": SCHEMA_VERSION, "kind": kind, "model": model, "protocol": protocol,
            "leanlm_version": __version__, "machine": machine_info(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results}


def validate(doc: dict) -> None:
    """Raise ValueError when ``doc`` is not a result document of a schema we understand."""
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise ValueError(f"result document lacks {missing}")
    if doc["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"result schema {doc['schema_version']} is not {SCHEMA_VERSION}")
