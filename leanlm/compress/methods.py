"""Every compression method by name, and the function that implements it (``module:function``).

The table is the one place that knows which package implements which ``--method``; entries are
resolved lazily so that ``leanlm --help`` imports none of them. Each function has the signature
``fn(spec: str, out: Path, options: dict) -> dict`` and returns a JSON-able summary of what it wrote.
"""
from __future__ import annotations

import importlib
from typing import Callable

METHODS: dict[str, str] = {
    "lossless": "leanlm.compress.lossless.api:compress_cli",
    "int8": "leanlm.compress.quant.api:compress_cli",
    "gptq-int8": "leanlm.compress.quant.api:compress_cli",
    "awq-int8": "leanlm.compress.quant.api:compress_cli",
    "int8-block": "leanlm.compress.quant.api:compress_cli",
    "w8a8": "leanlm.compress.quant.api:compress_cli",
    "smoothquant": "leanlm.compress.quant.api:compress_cli",
    "rtn-w4": "leanlm.compress.quant.api:compress_cli",
    "awq-w4": "leanlm.compress.quant.api:compress_cli",
    "svd": "leanlm.compress.lowrank.api:compress_cli",
    "lowrank": "leanlm.compress.lowrank.api:compress_cli",
    "tt-embed": "leanlm.compress.lowrank.api:compress_cli",
    "combined": "leanlm.compress.recipes:compress_cli",
}
METHOD_NAMES = list(METHODS)


def resolve_method(method: str) -> Callable:
    if method not in METHODS:
        raise ValueError(f"unknown compression method '{method}'; choose one of {METHOD_NAMES}")
    mod, fn = METHODS[method].split(":")
    try:
        module = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        raise NotImplementedError(f"method '{method}' is not available in this build ({e})") from e
    return getattr(module, fn)
