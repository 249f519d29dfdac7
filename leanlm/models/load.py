"""One loader used everywhere: ``load(spec, dtype=..., device=...) -> (model, tokenizer)``."""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..fileio import atomic_directory, atomic_write_json, sha256_file
from .specs import (MANIFEST, PACKAGED, ModelSpecError, cache_dir, packaged_gguf_path, resolve_loader,
                    valid_specs)
from .tiny import TINY_CONFIGS, build_tiny

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}
CACHE_MARKER = "leanlm-cache.json"
CACHE_VERSION = 1

# transformers' from_pretrained patches process-wide functions while it builds a model (``no_init_weights``,
# ``no_tie_weights``: PreTrainedModel.tie_weights and torch.nn.init's functions replaced, then restored). Two
# threads doing it at once can restore each other's patch: tie_weights then stays a no-op for the rest of
# the process (every later tied model loads with its lm_head on meta) and new modules are left uninitialised.
# `leanlm serve --follow` loads generations on a thread while an evolve loop in the same process loads and
# builds models, so every leanlm code path that builds or loads a model holds this lock.
MODEL_BUILD_LOCK = threading.RLock()


class ModelLoadError(RuntimeError):
    """A model's files exist but cannot be read (corrupt, truncated, unsupported)."""


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unsupported dtype '{dtype}'; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def _finish(model: PreTrainedModel, tok: PreTrainedTokenizerBase, dtype: torch.dtype, device: str):
    model = model.to(device=device, dtype=dtype).eval()
    tok.padding_side = "left"  # batched generation appends on the right
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def _load_hf_dir(path: Path, dtype: torch.dtype, gguf_file: str | None = None):
    what = path / gguf_file if gguf_file else path
    try:
        tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=dtype)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:
        raise ModelLoadError(f"cannot load model from {what}: {type(e).__name__}: {e}") from e
    if gguf_file:
        # transformers dequantises GGUF tensors to plain float on load but keeps its quantizer attached,
        # which blocks save_pretrained; the weights are ordinary float tensors, so detach it.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model, tok


def save_hf(model: PreTrainedModel, tok: PreTrainedTokenizerBase | None, path: Path) -> None:
    """``save_pretrained`` (safetensors) of model and tokenizer, on every process: once torch.distributed
    is up, transformers writes model files on rank 0 only, and a data-parallel run's other processes keep
    their own copy (``evolve.dist``), so those write the same files the plain way."""
    import torch.distributed as td

    path = Path(path)
    if td.is_available() and td.is_initialized() and td.get_rank() != 0:
        from safetensors.torch import save_model

        path.mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(path)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(path)
        save_model(model, str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        model.save_pretrained(path, safe_serialization=True)
    if tok is not None:
        tok.save_pretrained(path)


def _cached_packaged(name: str) -> Path:
    """Convert a packaged GGUF once into a bf16 safetensors directory; later loads take seconds."""
    gguf = packaged_gguf_path(name)
    target = cache_dir() / name
    marker = target / CACHE_MARKER
    source = {"gguf": str(gguf), "gguf_bytes": gguf.stat().st_size, "cache_version": CACHE_VERSION}
    if marker.is_file():
        try:
            if {k: v for k, v in json.loads(marker.read_text()).items() if k in source} == source:
                return target
        except json.JSONDecodeError:
            pass
        log.warning("cache for %s is stale or corrupt; rebuilding %s", name, target)
    log.info("converting %s (%s) to a safetensors cache at %s", name, PACKAGED[name].note, target)
    t0 = time.perf_counter()
    model, tok = _load_hf_dir(gguf.parent, torch.bfloat16, gguf_file=gguf.name)
    with atomic_directory(target, overwrite=True) as tmp:
        save_hf(model, tok, tmp)
        atomic_write_json(tmp / CACHE_MARKER, {**source, "gguf_sha256": sha256_file(gguf),
                                               "note": PACKAGED[name].note,
                                               "seconds": round(time.perf_counter() - t0, 1)})
    return target


def resolve(spec: str) -> tuple[str, Path | None]:
    """Classify a spec: ('packaged'|'tiny'|'hf'|'gguf'|'artifact', path or None)."""
    if spec in PACKAGED:
        return "packaged", None
    if spec in TINY_CONFIGS:
        return "tiny", None
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / MANIFEST).is_file():
            return "artifact", path
        if (path / "config.json").is_file():
            return "hf", path
        raise ModelSpecError(f"{path} is a directory but holds neither config.json (a Hugging Face model) "
                             f"nor {MANIFEST} (a leanlm output)")
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", path
    if path.exists():
        raise ModelSpecError(f"{path} is not a model directory or a .gguf file")
    raise ModelSpecError(f"unknown model spec '{spec}': no such registry name or path. "
                         f"Valid specs: {', '.join(valid_specs())}")


def model_dir(spec: str) -> Path | None:
    """The directory whose files hold a spec's weights (converting a packaged model if needed)."""
    kind, path = resolve(spec)
    if kind == "packaged":
        return _cached_packaged(spec)
    return path if kind in ("hf", "artifact") else (path.parent if kind == "gguf" else None)


def read_manifest(path: Path) -> dict:
    try:
        return json.loads((path / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path / MANIFEST} is not valid JSON: {e}") from e


def load(spec: str, dtype: str | torch.dtype = "bf16", device: str = "cpu"):
    """Load a model and its tokenizer from a spec (see ``leanlm.models.specs``). Returns ``(model, tok)``.
    Thread-safe: loads in different threads run one at a time (``MODEL_BUILD_LOCK``)."""
    with MODEL_BUILD_LOCK:
        return _load(spec, dtype, device)


def _load(spec: str, dtype: str | torch.dtype, device: str):
    dt = parse_dtype(dtype)
    kind, path = resolve(spec)
    if kind == "tiny":
        return _finish(*build_tiny(TINY_CONFIGS[spec], dt), dt, device)
    if kind == "packaged":
        return _finish(*_load_hf_dir(_cached_packaged(spec), dt), dt, device)
    if kind == "gguf":
        return _finish(*_load_hf_dir(path.parent, dt, gguf_file=path.name), dt, device)
    if kind == "hf":
        return _finish(*_load_hf_dir(path, dt), dt, device)
    manifest = read_manifest(path)
    fmt = manifest.get("format")
    if not isinstance(fmt, str):
        raise ModelLoadError(f"{path / MANIFEST} names no 'format'")
    model, tok = resolve_loader(fmt)(path, dtype=dt, device=device)
    tok.padding_side = "left"
    return model.eval(), tok
