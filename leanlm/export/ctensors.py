"""``leanlm export SRC --to compressed-tensors --type W8A8|W8A16|W8A16-G32|W4A16``: what llm-compressor writes.

Steps (orchestration; the grids are in ``ctgrid.py``, the calibration math in ``compress/quant``):

1. load SRC dense in bf16 (leanlm artifacts dequantised first, ``hf.load_dense``);
2. calibrate on the mixed corpus (or ``--calib FILE``) with leanlm's own quantisers: W8A8 runs SmoothQuant
   (alpha chosen by W8A8 calibration loss; smoothing folded into the preceding RMSNorms and, for
   up->down, into the producing linear), W4A16 runs AWQ (scales folded the same way, clip ratios kept);
   W8A16 and ``W4A16-RTN`` do not calibrate;
3. round every block linear onto compressed-tensors' grid (int8 per channel or, W8A16-G32, per 32 along K,
   symmetric; int4 group 64
   asymmetric with integer zero points, 32 where a width needs it) - ``lm_head`` stays dense;
4. compress each linear with the package's own compressor for the scheme (``int-quantized`` for W8A8,
   ``pack-quantized`` otherwise), verify that the package decompresses exactly the weights we meant,
   and write safetensors + ``config.json`` (``quantization_config`` from ``QuantizationConfig``, through
   ``ModelCompressor.update_config``), generation config and tokenizer, atomically.
"""
from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..compress.quant.primitives import INT8_BLOCK
from ..config import require, to_dict
from ..fileio import atomic_directory
from . import ctgrid
from .hf import load_dense, refuse_existing, write_files_manifest

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"


class Scheme(str, enum.Enum):
    W8A8 = "W8A8"            # int8 per-channel weights, dynamic per-token int8 activations (SmoothQuant)
    W8A16 = "W8A16"          # int8 per-channel weights only
    W8A16_G32 = "W8A16-G32"  # int8 weights, one scale per 32 along K (leanlm's int8-block; Q8_0's grid)
    W4A16 = "W4A16"          # int4 group-wise asymmetric weights (AWQ)
    W4A16_RTN = "W4A16-RTN"  # the same grid, round to nearest, no calibration


@dataclass(frozen=True)
class CTConfig:
    scheme: Scheme = field(default=Scheme.W4A16, metadata={"help": "compressed-tensors scheme"})
    group_size: int = field(default=64, metadata={"help": "int4 group (32 where a width needs it)"})
    calib: str = field(default="mix", metadata={"help": "calibration corpus name or text file"})
    calib_n: int = field(default=16, metadata={"help": "calibration sequences"})
    calib_seq_len: int = field(default=512, metadata={"help": "tokens per calibration sequence"})

    def __post_init__(self) -> None:
        require(isinstance(self.scheme, Scheme), f"scheme must be a Scheme, got {self.scheme!r}")
        require(self.group_size in (32, 64, 128), f"group_size must be 32, 64 or 128, got {self.group_size}")
        require(self.calib_n >= 2 and self.calib_seq_len >= 16, "calib_n >= 2 and calib_seq_len >= 16")

    @property
    def bits(self) -> int:
        return 8 if self.scheme in (Scheme.W8A8, Scheme.W8A16, Scheme.W8A16_G32) else 4


def config_from_options(options: dict) -> CTConfig:
    qtype = (options.get("qtype") or "W4A16").upper().replace("_", "-")
    if qtype not in {s.value for s in Scheme}:
        raise ValueError(f"--to compressed-tensors: --type must be one of {[s.value for s in Scheme]}, "
                         f"got '{options.get('qtype')}'")
    kw = {"scheme": Scheme(qtype)}
    if options.get("group_size"):
        kw["group_size"] = int(options["group_size"])
    if options.get("calib"):
        kw["calib"] = str(options["calib"])
    for k in ("calib_n", "calib_seq_len"):
        if options.get(k):
            kw[k] = int(options[k])
    return CTConfig(**kw)


# ------------------------------------------------------------------------------------ the package's side
def ct_scheme(cfg: CTConfig, group: int | None, targets: list[str]):
    """The ``QuantizationScheme`` for ``cfg`` (the presets llm-compressor uses, our group size)."""
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationScheme, QuantizationStrategy,
                                                 QuantizationType)

    if cfg.scheme is Scheme.W8A16_G32:
        weights = QuantizationArgs(num_bits=8, type=QuantizationType.INT, strategy=QuantizationStrategy.GROUP,
                                   group_size=group, symmetric=True, dynamic=False)
    elif cfg.bits == 8:
        weights = QuantizationArgs(num_bits=8, type=QuantizationType.INT, strategy=QuantizationStrategy.CHANNEL,
                                   symmetric=True, dynamic=False)
    else:
        weights = QuantizationArgs(num_bits=4, type=QuantizationType.INT, strategy=QuantizationStrategy.GROUP,
                                   group_size=group, symmetric=False, dynamic=False)
    acts = None
    if cfg.scheme is Scheme.W8A8:
        acts = QuantizationArgs(num_bits=8, type=QuantizationType.INT, strategy=QuantizationStrategy.TOKEN,
                                symmetric=True, dynamic=True)
    return QuantizationScheme(targets=targets, weights=weights, input_activations=acts)


def compressor_for(scheme):
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.format import infer_module_format

    fmt = infer_module_format(nn.Linear, scheme)
    return fmt, BaseCompressor.get_value_from_registry(fmt.value)


# ------------------------------------------------------------------------------------ our side
@dataclass(frozen=True)
class QuantLinear:
    """One block linear on compressed-tensors' grid: int8 codes, scale (N, 1|G), zero point or None."""

    q: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    group: int | None

    def dequantized(self) -> torch.Tensor:
        return ctgrid.dequantize(self.q, self.scale, self.zero_point)


def calibration(tok, cfg: CTConfig) -> torch.Tensor:
    from ..compress.calib import calibration_ids

    return calibration_ids(tok, cfg.calib_n, cfg.calib_seq_len, seed=0, corpus=cfg.calib)


def calibrate(model: nn.Module, tok, cfg: CTConfig) -> tuple[dict, dict[str, torch.Tensor]]:
    """Fold SmoothQuant (W8A8) or AWQ (W4A16) scales into ``model`` in place; (summary, AWQ clip ratios)."""
    from ..compress.quant.config import Method, QuantConfig
    from ..compress.quant.quantize import awq_pass, smoothquant_pass
    from ..models.arch import arch_for

    if cfg.scheme not in (Scheme.W8A8, Scheme.W4A16):
        return {}, {}
    arch = arch_for(model)
    ids = calibration(tok, cfg)
    t0 = time.perf_counter()
    if cfg.scheme is Scheme.W8A8:
        info = smoothquant_pass(model, arch, QuantConfig(method=Method.SMOOTHQUANT, calib_n=cfg.calib_n,
                                                         calib_seq_len=cfg.calib_seq_len), ids)
        clips = {}
    else:
        found = awq_pass(model, arch, QuantConfig(method=Method.AWQ_W4, group_size=cfg.group_size,
                                                  calib_n=cfg.calib_n, calib_seq_len=cfg.calib_seq_len), ids)
        info, clips = {"awq_alpha_mean": sum(found["alphas"].values()) / max(1, len(found["alphas"]))}, found["clips"]
    info["calibration_seconds"] = round(time.perf_counter() - t0, 1)
    info["calibration_tokens"] = int(ids.numel())
    return info, clips


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    from ..models.arch import arch_for, decoder_layers

    arch = arch_for(model)
    return {f"{arch.layers}.{i}.{rel}": block.get_submodule(rel)
            for i, block in enumerate(decoder_layers(model, arch)) for rel in arch.linears}


def quantize_linears(model: nn.Module, cfg: CTConfig, clips: dict[str, torch.Tensor] | None = None
                     ) -> dict[str, QuantLinear]:
    """Every block linear on the scheme's grid (scales in the model's dtype)."""
    dtype = model.get_input_embeddings().weight.dtype
    out = {}
    for name, lin in block_linears(model).items():
        w = lin.weight.detach()
        if cfg.scheme is Scheme.W8A16_G32:
            q, s = ctgrid.quantize_int8_group(w, INT8_BLOCK, dtype)
            out[name] = QuantLinear(q, s, None, INT8_BLOCK)
            continue
        if cfg.bits == 8:
            q, s = ctgrid.quantize_int8_channel(w, dtype)
            out[name] = QuantLinear(q, s, None, None)
            continue
        g = ctgrid.group_size_for(w.shape[1], cfg.group_size)
        clip = (clips or {}).get(name)
        if clip is not None and clip.shape != (w.shape[0], w.shape[1] // g):
            clip = None   # AWQ searched another grouping (a narrower fallback group): plain min/max
        q, s, z = ctgrid.quantize_int4_group(w, g, dtype, clip)
        out[name] = QuantLinear(q, s, z, g)
    return out


def compress_linears(layers: dict[str, QuantLinear], cfg: CTConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """Compressed tensors (prefixed names) for every layer, through the package's compressor, each checked:
    the package's ``decompress`` must give back exactly our dequantised weight. Returns (tensors, groups)."""
    by_group: dict[int | None, list[str]] = {}
    for name, ql in layers.items():
        by_group.setdefault(ql.group, []).append(name)
    single = len(by_group) == 1
    tensors: dict[str, torch.Tensor] = {}
    groups = {}
    for i, (g, names) in enumerate(sorted(by_group.items(), key=lambda kv: -(kv[0] or 0))):
        targets = ["Linear"] if single else [f"re:^{n.replace('.', chr(92) + '.')}$" for n in names]
        scheme = ct_scheme(cfg, g, targets)
        fmt, comp = compressor_for(scheme)
        groups[f"group_{i}"] = scheme
        for name in names:
            ql = layers[name]
            want = ql.dequantized()
            state = {"weight": want.float(), "weight_scale": ql.scale}
            if ql.zero_point is not None:
                state["weight_zero_point"] = ql.zero_point
            packed = comp.compress(state, scheme)
            back = comp.decompress(packed, scheme)["weight"]
            if not torch.equal(back.to(want.dtype), want):
                raise RuntimeError(f"{name}: compressed-tensors' {fmt.value} round trip differs from the "
                                   f"weights we meant (max |diff| {float((back.float() - want.float()).abs().max())})")
            tensors.update({f"{name}.{k}": v.contiguous() for k, v in packed.items()})
    return tensors, {"groups": groups, "format": fmt}


def quantization_config(groups: dict, fmt):
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus

    return QuantizationConfig(config_groups=groups, format=fmt.value, ignore=["lm_head"],
                              quantization_status=QuantizationStatus.COMPRESSED)


def dense_tensors(model: nn.Module, layers: dict[str, QuantLinear]) -> dict[str, torch.Tensor]:
    """The model's other tensors (norms, embedding; a tied lm_head once, as save_pretrained does)."""
    skip = {f"{n}.weight" for n in layers}
    if getattr(model.config, "tie_word_embeddings", False):
        skip.add("lm_head.weight")
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in skip}


def write(out: Path, model: nn.Module, tok, layers: dict[str, QuantLinear], cfg: CTConfig, overwrite: bool,
          extra: dict) -> dict:
    from compressed_tensors.compressors import ModelCompressor
    from safetensors.torch import save_file

    tensors, info = compress_linears(layers, cfg)
    qcfg = quantization_config(info["groups"], info["format"])
    with atomic_directory(out, overwrite=overwrite) as tmp:
        save_file({**dense_tensors(model, layers), **tensors}, str(tmp / WEIGHTS), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        ModelCompressor(quantization_config=qcfg).update_config(str(tmp))
        doc = write_files_manifest(tmp, {"format": "leanlm.export.compressed-tensors", "config": to_dict(cfg),
                                         "compression_format": info["format"].value, **extra})
    return doc


def export_model(model: nn.Module, tok, out: Path, cfg: CTConfig, overwrite: bool = False,
                 source: str = "") -> tuple[dict, dict[str, QuantLinear]]:
    """Calibrate, quantise and write ``model`` (changed in place: scales folded). Returns (doc, layers)."""
    info, clips = calibrate(model, tok, cfg)
    layers = quantize_linears(model, cfg, clips)
    doc = write(out, model, tok, layers, cfg, overwrite, {"source": source, "calibration": info})
    return doc, layers


@torch.no_grad()
def leanlm_model(model: nn.Module, layers: dict[str, QuantLinear], cfg: CTConfig) -> nn.Module:
    """``model`` (scales folded) with each block linear replaced by leanlm's own integer module holding the
    exported codes: the reference that engines loading the export are compared against. Changes ``model``."""
    from ..compress.quant.modules import Int4Linear, Int8BlockLinear, Int8Linear, W8A8Linear

    dtype = model.get_input_embeddings().weight.dtype
    for name, ql in layers.items():
        if cfg.scheme is Scheme.W8A8:
            new = W8A8Linear(ql.q, ql.scale.float().view(-1))
        elif cfg.scheme is Scheme.W8A16_G32:
            new = Int8BlockLinear(ql.q, ql.scale.to(dtype), group=ql.group)
        elif cfg.bits == 8:
            new = Int8Linear(ql.q, ql.scale.view(-1).to(dtype))
        else:   # leanlm's int4 grid: w = (c - 8) * s + z; ours: (q - zp) * s, so c = q + 8, z = -zp * s
            zero = (-ql.zero_point.float() * ql.scale.float()).to(dtype)
            new = Int4Linear((ql.q.to(torch.int16) + 8).to(torch.uint8), ql.scale.to(dtype), zero, ql.group)
        model.set_submodule(name, new)
    return model


def export_cli(src: str, out: Path, options: dict) -> dict:
    t0 = time.perf_counter()
    cfg = config_from_options(options)
    refuse_existing(out, options)
    model, tok, replaced = load_dense(src, torch.bfloat16)
    doc, layers = export_model(model, tok, out, cfg, overwrite=bool(options.get("force")), source=src)
    groups = sorted({ql.group for ql in layers.values() if ql.group})
    return {"source": src, "target": "compressed-tensors", "scheme": cfg.scheme.value, "output": str(out),
            "compression_format": doc["compression_format"], "quantized_linears": len(layers),
            "group_sizes": groups, "densified_source_modules": len(replaced),
            "weights_bytes": doc["files"][WEIGHTS]["bytes"], "calibration": doc["calibration"],
            "seconds": round(time.perf_counter() - t0, 1)}
