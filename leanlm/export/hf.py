"""``leanlm export SRC --to hf``: a plain dense safetensors directory that any transformers loads.

Whatever ``leanlm.load`` returns for SRC (a spec, an HF or GGUF model, or any leanlm artifact: int8,
w8a8, awq-w4, lossless, lowrank, combined) is turned back into ordinary ``nn.Linear`` layers holding the
dequantised weights (``densify``), then saved with ``save_pretrained``: config, generation config,
tokenizer. ``--type`` picks the stored dtype (BF16 default, F16, F32; F32 keeps dequantised int8 / int4 /
low-rank weights exactly, bf16 rounds them as leanlm's own dense prefill path does).

A ``leanlm-export.json`` beside the files records the source, the config and every file's SHA-256;
it is not named ``leanlm.json``, so ``leanlm.load(OUT)`` reads the directory as the HF model it is.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn

from ..fileio import atomic_directory, atomic_write_json, sha256_file

log = logging.getLogger(__name__)

EXPORT_MANIFEST = "leanlm-export.json"
FORMAT_VERSION = 1
HF_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def _dense_of(module: nn.Module) -> torch.Tensor | None:
    """The (out, in) float32 weight of a linear-like leanlm module, or None for other modules.

    Known modules expose their own dequantisation; anything else with ``in_features``/``out_features``
    is read by probing: the module applied to the identity rows gives ``W.T`` (+ bias) exactly in float32.
    """
    from ..compress.lowrank.modules import LowRankLinear
    from ..compress.quant.modules import Int4Linear, Int8BlockLinear, Int8Linear, W8A8Linear
    from ..compress.quant.primitives import INT4_MID

    if isinstance(module, nn.Linear) or not hasattr(module, "in_features"):
        return None
    if isinstance(module, Int8Linear):
        return module.dequantized(torch.float32)
    if isinstance(module, Int4Linear):   # codes() reads any kernel layout exactly; (G, N, 2) scale/zero
        sz = module.scales_zeros.float().repeat_interleave(module.group, dim=0)[:module.in_features]
        return (module.codes().float() - INT4_MID) * sz[..., 0].t() + sz[..., 1].t()
    if isinstance(module, W8A8Linear):
        return module.qweight.float() * module.scale.float()[:, None]
    if isinstance(module, Int8BlockLinear):   # its two int4 halves, each read exactly as above
        return _dense_of(module.hi) + _dense_of(module.lo)
    if isinstance(module, LowRankLinear):
        return module.dense_weight(torch.float32)
    eye = torch.eye(module.in_features, dtype=torch.float32)
    bias = getattr(module, "bias", None)
    y = module(eye)
    return (y - bias.float() if bias is not None else y).t().contiguous()


@torch.no_grad()
def densify(model: nn.Module, dtype: torch.dtype = torch.float32) -> list[str]:
    """Replace every linear-like leanlm module by an ``nn.Linear`` with its dequantised weight; cast the
    whole model to ``dtype``. Returns the names replaced."""
    replaced = []
    for name, module in list(model.named_modules()):
        if any(name.startswith(r + ".") for r in replaced):   # a part of a module already replaced
            continue
        w = _dense_of(module)
        if w is None:
            continue
        bias = getattr(module, "bias", None)
        lin = nn.Linear(module.in_features, module.out_features, bias=bias is not None, dtype=dtype)
        lin.weight.copy_(w.to(dtype))
        if bias is not None:
            lin.bias.copy_(bias.to(dtype))
        model.set_submodule(name, lin)
        replaced.append(name)
    for attr in ("leanlm_quant", "lazy_weights"):
        if hasattr(model, attr):
            delattr(model, attr)
    return replaced


def load_dense(src: str, dtype: torch.dtype = torch.float32):
    """``(model, tok, replaced)``: ``leanlm.load(src)`` with every leanlm module densified to ``dtype``."""
    from ..models import load

    model, tok = load(src, dtype=dtype if dtype != torch.float16 else torch.float32)
    replaced = densify(model, dtype)
    model.to(dtype)
    return model, tok, replaced


def write_files_manifest(tmp: Path, doc: dict) -> dict:
    """Add every file's size and SHA-256 to ``doc`` and write it as ``leanlm-export.json``."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(tmp.iterdir()) if p.is_file()}
    doc = {**doc, "format_version": FORMAT_VERSION, "files": files}
    atomic_write_json(tmp / EXPORT_MANIFEST, doc)
    return doc


def refuse_existing(out: Path, options: dict) -> None:
    """Fail before any work when ``out`` exists and ``--force`` was not given."""
    if Path(out).exists() and not options.get("force"):
        raise FileExistsError(f"{out} already exists (pass --force to replace it)")


def hf_dtype(qtype: str | None) -> torch.dtype:
    key = (qtype or "BF16").upper()
    if key not in HF_DTYPES:
        raise ValueError(f"--to hf stores a dense dtype; --type must be one of {sorted(HF_DTYPES)}, got '{qtype}'")
    return HF_DTYPES[key]


def export_cli(src: str, out: Path, options: dict) -> dict:
    """Write ``src`` dequantised as a plain HF safetensors directory at ``out``."""
    t0 = time.perf_counter()
    dtype = hf_dtype(options.get("qtype"))
    refuse_existing(out, options)
    model, tok, replaced = load_dense(src, dtype)
    with atomic_directory(out, overwrite=bool(options.get("force"))) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        doc = write_files_manifest(tmp, {"format": "leanlm.export.hf", "source": src,
                                         "dtype": str(dtype).removeprefix("torch."),
                                         "densified_modules": len(replaced)})
    weights = sum(v["bytes"] for k, v in doc["files"].items() if k.endswith(".safetensors"))
    log.info("exported %s to %s (%d modules densified)", src, out, len(replaced))
    return {"source": src, "target": "hf", "output": str(out), "dtype": doc["dtype"],
            "densified_modules": len(replaced), "weights_bytes": weights,
            "files": sorted(doc["files"]), "seconds": round(time.perf_counter() - t0, 1)}
