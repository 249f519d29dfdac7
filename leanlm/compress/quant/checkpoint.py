"""Quantised checkpoint format (``leanlm.quant``), written atomically, loaded exactly.

Directory layout::

    leanlm.json        manifest: {"format": "leanlm.quant", "format_version": 1, "config": QuantConfig,
                       "model_dtype", "modules": {name: {kind, in_features, out_features, group}},
                       "files": {"model.safetensors": {"sha256", "bytes"}}, "calibration": {...}}
    model.safetensors  float tensors under their usual names (tied copies stored once) plus, for each
                       quantised linear NAME, NAME.qweight (int8 codes, or int4 codes two per byte:
                       column 2i low nibble, 2i+1 high), NAME.scale, NAME.zero (int4), NAME.bias.
                       The safetensors header metadata repeats format, version, config and modules.
    config.json, tokenizer files   as written by transformers, so the model can be rebuilt.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ...config import from_dict, to_dict
from ...fileio import atomic_directory, atomic_write_json, sha256_file
from .config import QuantConfig
from .modules import QUANT_MODULES, Int4Linear, Int8BlockLinear, _QuantLinear

log = logging.getLogger(__name__)

FORMAT = "leanlm.quant"
FORMAT_VERSION = 1
MANIFEST = "leanlm.json"
WEIGHTS = "model.safetensors"


class QuantCheckpointError(RuntimeError):
    """A quantised checkpoint that is missing, corrupt, or of an unknown format version."""


def _module_entry(m: _QuantLinear) -> dict:
    return {"kind": m.kind, "in_features": m.in_features, "out_features": m.out_features,
            "group": m.group if isinstance(m, (Int4Linear, Int8BlockLinear)) else None}


def owned_by(name: str, modules) -> bool:
    """Does the dotted ``name`` (a state-dict key or a submodule) lie inside one of ``modules`` (names), directly
    or in a child of one (an ``Int8BlockLinear``'s two ``Int4Linear`` halves)?"""
    parts = name.split(".")
    return any(".".join(parts[:i]) in modules for i in range(1, len(parts)))


def quant_modules(model: nn.Module) -> dict[str, _QuantLinear]:
    """The integer modules of ``model`` by name, outermost only (the halves inside one are its own)."""
    found: dict[str, _QuantLinear] = {}
    for n, m in model.named_modules():   # parents come before their children
        if isinstance(m, _QuantLinear) and not owned_by(n, found):
            found[n] = m
    return found


def checkpoint_tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """All tensors to save (portable forms for quantised modules, tied storages once) and module entries."""
    modules = quant_modules(model)
    tensors: dict[str, torch.Tensor] = {}
    for name, m in modules.items():
        tensors.update({f"{name}.{k}": v.detach().contiguous() for k, v in m.tensors().items()})
    seen: set[int] = set()
    for key, t in model.state_dict().items():
        if owned_by(key, modules):
            continue
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:   # tied weights (SmolLM2's lm_head is the embedding)
            continue
        seen.add(ptr)
        tensors[key] = t.detach().contiguous()
    return tensors, {n: _module_entry(m) for n, m in modules.items()}


def save_quantized(model: nn.Module, tok, out: str | Path, cfg: QuantConfig, overwrite: bool = False,
                   extra: dict | None = None) -> dict:
    """Write ``model`` (already quantised) to directory ``out``; returns the manifest."""
    out = Path(out)
    tensors, modules = checkpoint_tensors(model)
    dtype = str(model.get_input_embeddings().weight.dtype).removeprefix("torch.")
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "quant_config": json.dumps(to_dict(cfg)),
            "modules": json.dumps(modules), "model_dtype": dtype}
    with atomic_directory(out, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata=meta)
        model.config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": to_dict(cfg),
                    "model_dtype": dtype, "modules": modules, "calibration": extra or {},
                    "files": {WEIGHTS: {"sha256": sha256_file(tmp / WEIGHTS),
                                        "bytes": (tmp / WEIGHTS).stat().st_size}}}
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise QuantCheckpointError(f"cannot read {path / MANIFEST}: {e}") from e
    if manifest.get("format") != FORMAT:
        raise QuantCheckpointError(f"{path} holds format {manifest.get('format')!r}, not {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise QuantCheckpointError(f"{path}: format version {manifest.get('format_version')} is not "
                                   f"{FORMAT_VERSION} (this leanlm reads version {FORMAT_VERSION})")
    return manifest


def load_quantized(path: str | Path, dtype: torch.dtype = torch.bfloat16, device: str = "cpu",
                   verify: bool = True) -> tuple[nn.Module, object, QuantConfig]:
    """Rebuild the model from config.json, put integer modules in place, load every tensor; exact."""
    path = Path(path)
    if device != "cpu":
        raise QuantCheckpointError(f"quantised models run on CPU integer kernels; "
                                   f"device '{device}' is unsupported")
    manifest = read_manifest(path)
    weights = path / WEIGHTS
    if verify and sha256_file(weights) != manifest["files"][WEIGHTS]["sha256"]:
        raise QuantCheckpointError(f"{weights} does not match the checksum in {MANIFEST} "
                                   f"(corrupt or modified)")
    cfg = from_dict(QuantConfig, manifest["config"])
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype)
    # As leanlm.models.load does: cast every float buffer too (rotary tables), so outputs match exactly.
    model.to(dtype)
    modules: dict[str, dict] = manifest["modules"]
    with safe_open(str(weights), framework="pt") as f:
        floats = install_modules(model, f, modules, dtype)
    load_floats(model, floats, modules, weights)
    tok = AutoTokenizer.from_pretrained(path)
    model.eval()
    model.leanlm_quant = {"config": cfg, **manifest.get("calibration", {})}
    return model, tok, cfg


def install_modules(model: nn.Module, f, modules: dict[str, dict], dtype: torch.dtype,
                    skip_prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Put the integer modules listed in ``modules`` (name -> manifest entry) into ``model`` from the open
    safetensors file ``f``; return the remaining float tensors (cast to ``dtype``) for ``load_floats``.
    Keys under ``skip_prefix`` belong to the caller (e.g. a compressed embedding) and are left out."""
    keys = set(f.keys())
    for name, entry in modules.items():
        prefix = name + "."
        t = {k[len(prefix):]: f.get_tensor(k) for k in keys if k.startswith(prefix)}
        module = QUANT_MODULES[entry["kind"]].from_tensors(t, dtype, in_features=entry["in_features"],
                                                           group=entry["group"])
        model.set_submodule(name, module)
    return {k: f.get_tensor(k).to(dtype) for k in keys
            if k.rsplit(".", 1)[0] not in modules and not (skip_prefix and k.startswith(skip_prefix))}


def load_floats(model: nn.Module, floats: dict[str, torch.Tensor], modules: dict[str, dict], where) -> None:
    """Load the float tensors; every tensor must be accounted for (a tied lm_head may be absent)."""
    missing, unexpected = model.load_state_dict(floats, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    missing = [k for k in missing if not owned_by(k, modules) and k not in tied]
    if missing or unexpected:
        raise QuantCheckpointError(f"{where}: missing tensors {missing[:5]}, unexpected {unexpected[:5]}")
