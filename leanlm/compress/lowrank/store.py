"""The ``leanlm.lowrank`` directory format: one safetensors file, the HF config, the tokenizer, a manifest.

Layout (format version 1)::

    leanlm.json          {"format": "leanlm.lowrank", "format_version": 1, "config": ..., "layers": {name:
                          {"in", "out", "rank", "bias"}}, "tt": {...} | null, "files": {name: {"sha256", "bytes"}}}
    weights.safetensors  every tensor of the model's state dict, tied duplicates once; a low-rank layer ``L``
                         as ``L.a_codes`` int8 (out, r), ``L.a_scale`` f32 (out,), ``L.b_codes`` int8 (r, in),
                         ``L.b_scale`` f32 (r,); a TT embedding as ``tt.core{i}.codes`` / ``tt.core{i}.scale``
                         in place of its table
    config.json, tokenizer files   as written by ``save_pretrained``
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ...fileio import atomic_directory, atomic_write_json, sha256_file
from .config import Execution
from .modules import LowRankLinear
from .targets import replace_module
from .ttembed import TTEmbedding

log = logging.getLogger(__name__)

FORMAT = "leanlm.lowrank"
FORMAT_VERSION = 1
MANIFEST = "leanlm.json"
WEIGHTS = "weights.safetensors"


class LowRankFormatError(ValueError):
    """A ``leanlm.lowrank`` directory that is corrupt, truncated or from a newer leanlm."""


def _unique_state(model: nn.Module, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], list[str]]:
    """State dict with tied duplicates dropped (listed) and floating tensors other than scales in ``dtype``."""
    seen: dict[int, str] = {}
    state, tied = {}, []
    for k, v in model.state_dict().items():
        key = v.untyped_storage().data_ptr()
        if key in seen and v.numel() > 0:
            tied.append(k)
            continue
        seen[key] = k
        if v.is_floating_point() and not k.endswith("_scale"):
            v = v.to(dtype)
        state[k] = v.detach().contiguous().cpu()
    return state, tied


def save_lowrank(model: nn.Module, tok, out: Path, manifest: dict, dtype: torch.dtype = torch.bfloat16,
                 tt: TTEmbedding | None = None, overwrite: bool = False) -> dict:
    """Write ``model`` (with its ``LowRankLinear`` layers and optional TT embedding) to ``out``; returns the manifest."""
    state, tied = _unique_state(model, dtype)
    if tt is not None:
        state.pop(f"{tt.name}.weight")
        state.update(tt.tensors())
    layers = {n: {"in": m.in_features, "out": m.out_features, "rank": m.rank, "bias": m.bias is not None}
              for n, m in model.named_modules() if isinstance(m, LowRankLinear)}
    with atomic_directory(out, overwrite) as tmp:
        model.config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        (tmp / WEIGHTS).chmod(0o644)
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest, "dtype": str(dtype).removeprefix("torch."),
               "layers": layers, "tied": tied, "tt": None if tt is None else tt.meta(),
               "files": {WEIGHTS: {"sha256": sha256_file(tmp / WEIGHTS), "bytes": (tmp / WEIGHTS).stat().st_size}}}
        atomic_write_json(tmp / MANIFEST, doc)
    return doc


def read_manifest(path: Path, verify: bool = True) -> dict:
    import json

    try:
        doc = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LowRankFormatError(f"cannot read {path / MANIFEST}: {e}") from e
    if doc.get("format") != FORMAT:
        raise LowRankFormatError(f"{path} holds format {doc.get('format')!r}, not {FORMAT!r}")
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise LowRankFormatError(f"{path} has format version {doc['format_version']}; this leanlm reads <= {FORMAT_VERSION}")
    if verify:
        for name, info in doc["files"].items():
            f = path / name
            if not f.is_file() or sha256_file(f) != info["sha256"]:
                raise LowRankFormatError(f"{f} is missing or its SHA-256 does not match the manifest")
    return doc


def load_lowrank(path: Path, dtype: torch.dtype = torch.bfloat16, device: str = "cpu",
                 execution: Execution = Execution.FACTORED):
    """``(model, tok)`` from a ``leanlm.lowrank`` directory; low-rank layers run factored or rebuilt dense."""
    path = Path(path)
    doc = read_manifest(path)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype)
    for name, info in doc["layers"].items():
        replace_module(model, name, LowRankLinear(info["in"], info["out"], info["rank"], info["bias"], dtype=dtype))
    state = load_file(str(path / WEIGHTS))
    if doc.get("tt"):
        tt = TTEmbedding.from_tensors(doc["tt"], state)
        for k in list(state):
            if k.startswith("tt."):
                del state[k]
        state[f"{tt.name}.weight"] = tt.rebuild(dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - set(doc["tied"]):
        raise LowRankFormatError(f"{path}: state does not fit the model (missing {sorted(set(missing) - set(doc['tied']))}, "
                                 f"unexpected {sorted(unexpected)})")
    if execution == Execution.DENSE:
        densify(model)
    return model.to(device).eval(), AutoTokenizer.from_pretrained(path)


@torch.no_grad()
def densify(model: nn.Module) -> None:
    """Replace every ``LowRankLinear`` by an ``nn.Linear`` holding its rebuilt weight ``A @ B``."""
    for name, m in [(n, m) for n, m in model.named_modules() if isinstance(m, LowRankLinear)]:
        dtype = next((b.dtype for b in [m.bias] if b is not None), _model_dtype(model))
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, dtype=dtype, device=m.a_codes.device)
        lin.weight.copy_(m.dense_weight(dtype))
        if m.bias is not None:
            lin.bias.copy_(m.bias)
        replace_module(model, name, lin)


def _model_dtype(model: nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())
