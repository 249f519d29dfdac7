"""Public API of ``leanlm.compress.quant``.

* ``quantize_model(model, cfg, calib_ids)`` - quantise in place (Python verb used by other helpers);
* ``save_quantized`` / ``load_quantized`` - the ``leanlm.quant`` checkpoint format;
* ``compress_cli(spec, out, options)`` - ``leanlm compress SPEC --method M`` for M in int8, w8a8,
  smoothquant, rtn-w4, awq-w4;
* ``load_model(path, dtype, device)`` - the loader registered for ``leanlm.json`` format ``leanlm.quant``.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch

from ...config import from_dict, to_dict
from ..calib import calibration_ids
from .checkpoint import load_quantized, save_quantized
from .config import Method, QuantConfig
from .quantize import quantize_model

log = logging.getLogger(__name__)

__all__ = ["Method", "QuantConfig", "quantize_model", "save_quantized", "load_quantized", "compress_cli",
           "load_model", "calibration_for", "calibration_summary"]


def calibration_for(tok, cfg: QuantConfig) -> torch.Tensor | None:
    """The calibration windows ``cfg`` asks for (None for methods that do not calibrate)."""
    if not cfg.calibrated:
        return None
    return calibration_ids(tok, cfg.calib_n, cfg.calib_seq_len, cfg.calib_seed, corpus=cfg.calib_corpus)


def calibration_summary(model) -> dict:
    """JSON-able calibration results attached by ``quantize_model`` (chosen alpha, seconds, ...)."""
    info = dict(getattr(model, "leanlm_quant", {}))
    info.pop("config", None)
    return info


def config_from_options(options: dict) -> QuantConfig:
    """``QuantConfig`` from CLI/caller options: keys naming config fields override the defaults."""
    names = {f.name for f in dataclasses.fields(QuantConfig)}
    return from_dict(QuantConfig, {k: v for k, v in options.items() if k in names and v is not None})


def compress_cli(spec: str, out: Path, options: dict) -> dict:
    """``leanlm compress``: load ``spec`` (bf16), quantise with ``options["method"]``, save to ``out``."""
    from ...models import load

    cfg = config_from_options(options)
    t0 = time.perf_counter()
    model, tok = load(spec, dtype="bf16")
    with torch.no_grad():
        quantize_model(model, cfg, calibration_for(tok, cfg))
    manifest = save_quantized(model, tok, out, cfg, overwrite=bool(options.get("force")),
                              extra=calibration_summary(model))
    return {"spec": spec, "method": cfg.method.value, "output": str(out), "config": to_dict(cfg),
            "quantized_modules": len(manifest["modules"]),
            "weights_bytes": manifest["files"]["model.safetensors"]["bytes"],
            "calibration": manifest["calibration"], "seconds": round(time.perf_counter() - t0, 1)}


def load_model(path: Path, dtype: torch.dtype = torch.bfloat16, device: str = "cpu"):
    """Loader for ``leanlm.quant`` directories (see ``leanlm.models.specs.ARTIFACT_LOADERS``)."""
    model, tok, _ = load_quantized(path, dtype, device)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok
