"""The compiled decoder (``kernels.c``): built on first use with the system C compiler, loaded with ctypes.

The shared library is cached under ``<leanlm cache>/ext/`` keyed by the source's hash, written atomically
(several processes may build at once). ctypes releases the GIL during each call, so chunks decode on
parallel threads. When no compiler is present, the build fails, or ``LEANLM_NO_CEXT=1``, ``library()``
returns None and the codec falls back to its numba decoders (same format, same checks, slower).

Instruction set: the library picks the best one at run time (``__builtin_cpu_supports``);
``LEANLM_LOSSLESS_ISA`` (``best``, ``scalar``, ``avx2``, ``avx512``) or the ``isa`` argument of
``codec.decode`` forces one (tests force each); forcing one the CPU lacks is an error, never a crash.
"""
from __future__ import annotations

import ctypes
import logging
import os
import subprocess
from functools import lru_cache
from pathlib import Path

from ... import cbuild

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ("-O3", "-std=gnu11", "-shared", "-fPIC", "-fno-strict-aliasing")
ABI_VERSION = 5
ISAS = {"best": 0, "scalar": 1, "avx2": 2, "avx512": 3}
ISA_NAMES = {v: k for k, v in ISAS.items()}
ERR_ISA = 8


class ExtensionUnavailable(RuntimeError):
    """The compiled decoder cannot be used here (no compiler, disabled, or the CPU lacks a forced ISA)."""


def compiler() -> str | None:
    return cbuild.compiler()


def build(force: bool = False) -> Path:
    """Compile ``kernels.c`` into the cache (once per source version); returns the library's path."""
    try:
        out = cbuild.build_library(SOURCE, FLAGS, compiler(), force=force)
    except cbuild.BuildError as e:
        raise ExtensionUnavailable(str(e)) from e
    log.debug("lossless decoder library %s", out)
    return out


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.ll_decode_jobs.argtypes = [p, i64, i32, p, i64]
    lib.ll_decode_jobs.restype = i64
    lib.ll_decode_blocks.argtypes = [p, p, i64, p, i32, p, i64]
    lib.ll_decode_blocks.restype = i64
    lib.ll_scratch_bytes.restype = i64
    lib.ll_cpu_isa.restype = i32
    lib.ll_abi_version.restype = i32
    if lib.ll_abi_version() != ABI_VERSION:
        raise ExtensionUnavailable(f"decoder library ABI {lib.ll_abi_version()} is not {ABI_VERSION}")
    return lib


@lru_cache(maxsize=1)
def _load() -> ctypes.CDLL | None:
    if os.environ.get("LEANLM_NO_CEXT", "") not in ("", "0"):
        return None
    try:
        return _bind(ctypes.CDLL(str(build())))
    except (ExtensionUnavailable, OSError, subprocess.SubprocessError) as e:
        log.warning("compiled lossless decoder unavailable (%s); using the numba decoder", e)
        return None


def library() -> ctypes.CDLL | None:
    """The loaded decoder library, or None (then the numba fallback decodes). ``LEANLM_NO_CEXT=1`` turns it
    off (checked on every call, so tests can switch)."""
    if os.environ.get("LEANLM_NO_CEXT", "") not in ("", "0"):
        return None
    return _load()


def cpu_isa() -> str:
    """The best instruction set this CPU runs the decoder with ('scalar' without the library)."""
    lib = library()
    return ISA_NAMES[lib.ll_cpu_isa()] if lib is not None else "scalar"


def requested_isa(isa: str | None = None) -> int:
    """The ISA code to decode with: the argument, else ``LEANLM_LOSSLESS_ISA``, else best."""
    name = (isa or os.environ.get("LEANLM_LOSSLESS_ISA") or "best").lower()
    if name not in ISAS:
        raise ValueError(f"unknown instruction set {name!r}; choose one of {sorted(ISAS)}")
    return ISAS[name]


def supports(isa: str) -> bool:
    lib = library()
    return lib is not None and ISAS[isa] <= lib.ll_cpu_isa()
