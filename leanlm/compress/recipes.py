"""The combined recipe: decomposition, then AWQ INT4, then lossless entropy coding of what remains.

``CombinedConfig.steps`` gives the order (validated), each step's budget comes from its own config:

1. ``embed``: store the token embedding as integer tensors (``lowrank.embedding``: int8 with one scale per
   32 entries - the default, GGUF's Q8_0 layout, which SmolLM2's table was published in - int8 rows, or
   plain or whitened low-rank SVD with ``embed_remove`` of its parameters removed). AWQ leaves the embedding in
   bf16 - in SmolLM2 it is 21% of the parameters and half the bytes of an AWQ W4 model - so this is where
   decomposition can shrink an INT4 model. (Decomposing the *block* linears as well is not composable
   with ``quant.quantize_model`` today: it requires an ``nn.Linear`` at every block position.)
2. ``recover`` (optional, before quantisation): QAT of the block linears with INT4 fake quantisation
   (straight-through) on the calibration corpus (``compress.recover``).
3. ``awq-w4``: ``quant.quantize_model`` (AWQ scale and clip search, INT4 group-wise).
4. ``lossless``: ``lossless.compress_path`` of the staged directory (rANS over the float tensors).

Output: ``OUT/leanlm.json`` (format ``leanlm.lowrank``, kind ``combined``) and ``OUT/packed/`` (the
lossless container) or ``OUT/plain/`` (staged files as they are). The staged directory holds
``config.json``, the tokenizer, ``weights.safetensors`` (quantised modules' tensors as ``quant`` writes
them, float tensors, the embedding's integer tensors as ``embed.*``) and ``stage.json``.
"""
from __future__ import annotations

import enum
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import from_dict, require, to_dict
from ..fileio import atomic_directory, atomic_write_json, sha256_file
from .lowrank.targets import arch_of
from .lowrank.embedding import EmbedMethod, compress_table, head_input_cholesky, rebuild_table, stored_params
from .recover import Finish, RecoveryConfig, recover

log = logging.getLogger(__name__)

FORMAT = "leanlm.lowrank"
KIND = "combined"
FORMAT_VERSION = 1
STAGE = "stage.json"
WEIGHTS = "weights.safetensors"


class Step(str, enum.Enum):
    EMBED = "embed"
    RECOVER = "recover"
    AWQ = "awq-w4"
    LOSSLESS = "lossless"


@dataclass(frozen=True)
class CombinedConfig:
    steps: tuple[Step, ...] = field(default=(Step.EMBED, Step.AWQ, Step.LOSSLESS), metadata={"help": "order"})
    embed_method: EmbedMethod = field(default=EmbedMethod.INT8_G32, metadata={"help": "embedding storage"})
    embed_remove: float = field(default=0.1, metadata={"help": "fraction of embedding parameters removed (svd)"})
    calib_n: int = field(default=32, metadata={"help": "calibration windows (whitened embedding)"})
    calib_seq_len: int = 256
    calib_seed: int = 0
    group_size: int = field(default=128, metadata={"help": "INT4 group (AWQ and the recovery's fake quant)"})
    awq_calib_n: int = field(default=16, metadata={"help": "AWQ calibration sequences (quant's default)"})
    awq_calib_seq_len: int = field(default=512, metadata={"help": "AWQ calibration sequence length"})
    recovery: RecoveryConfig = field(default=RecoveryConfig(finish=Finish.TRAINABLE))

    def __post_init__(self) -> None:
        steps = list(self.steps)
        require(len(set(steps)) == len(steps), f"steps repeat: {steps}")
        require(Step.AWQ in steps, "the combined recipe quantises: include 'awq-w4' in steps")
        require(Step.LOSSLESS not in steps or steps[-1] == Step.LOSSLESS, "lossless must be the last step")
        require(Step.RECOVER not in steps or steps.index(Step.RECOVER) < steps.index(Step.AWQ),
                "recover trains float weights: it must come before awq-w4")
        require(Step.EMBED not in steps or steps.index(Step.EMBED) < steps.index(Step.AWQ),
                "embed must come before awq-w4 (AWQ calibrates on the compressed embedding)")
        require(0.0 < self.embed_remove < 1.0, "embed_remove must be in (0, 1)")


# ----------------------------------------------------------------------------------- the recipe
def run_combined(model: nn.Module, tok, cfg: CombinedConfig) -> tuple[dict | None, dict]:
    """Apply the steps up to quantisation in place; returns (embedding integer tensors or None, report)."""
    from .calib import calibration_ids
    from .quant.api import QuantConfig, calibration_for, quantize_model
    from .quant.config import Method as QMethod

    report: dict = {"steps": [s.value for s in cfg.steps]}
    embed_t = None
    for step in cfg.steps:
        t0 = time.perf_counter()
        if step == Step.EMBED and cfg.embed_method != EmbedMethod.BF16:
            emb = model.get_input_embeddings()
            chol = None
            if cfg.embed_method == EmbedMethod.WHITENED_SVD:
                chol = head_input_cholesky(model, calibration_ids(tok, cfg.calib_n, cfg.calib_seq_len, cfg.calib_seed))
            embed_t = compress_table(emb.weight.detach(), cfg.embed_method, cfg.embed_remove, chol)
            with torch.no_grad():
                rebuilt = rebuild_table(embed_t, torch.float32)
                err = float((rebuilt - emb.weight.float()).norm() / emb.weight.float().norm())
                emb.weight.copy_(rebuilt.to(emb.weight.dtype))
            report["embed"] = {"method": cfg.embed_method.value, "params_before": emb.weight.numel(),
                               "params_after": stored_params(embed_t), "relative_error": err}
        elif step == Step.RECOVER:
            dtype = model.get_input_embeddings().weight.dtype
            model.float()  # train in float32; AWQ then sees the model in its original dtype again
            report["recover"] = recover(model, tok, cfg.recovery, weight_fake_quant=_int4_fake_quant(cfg.group_size))
            model.to(dtype)
        elif step == Step.AWQ:
            qcfg = QuantConfig(method=QMethod.AWQ_W4, group_size=cfg.group_size, calib_n=cfg.awq_calib_n,
                               calib_seq_len=cfg.awq_calib_seq_len)
            with torch.no_grad():
                quantize_model(model, qcfg, calibration_for(tok, qcfg))
            report["awq"] = {k: v for k, v in getattr(model, "leanlm_quant", {}).items() if k != "config"}
            report["awq"]["config"] = to_dict(qcfg)
        report.setdefault("seconds", {})[step.value] = round(time.perf_counter() - t0, 1)
    return embed_t, report


def _int4_fake_quant(group: int):
    from .quant.primitives import fake_quantize_int4

    return lambda w: fake_quantize_int4(w, group)


# ----------------------------------------------------------------------------------- storage
def _stage(model: nn.Module, tok, embed_t: dict | None, dst: Path) -> dict:
    from safetensors.torch import save_file

    from .quant.checkpoint import checkpoint_tensors

    tensors, modules = checkpoint_tensors(model)
    emb_key = arch_of(model).embedding + ".weight"
    if embed_t is not None:
        tensors.pop(emb_key)
        tensors.update({f"embed.{k}": v.contiguous() for k, v in embed_t.items()})
    dst.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst / WEIGHTS))
    model.config.save_pretrained(dst)
    tok.save_pretrained(dst)
    stage = {"modules": modules, "embed_key": emb_key, "embed": None if embed_t is None else sorted(embed_t),
             "model_dtype": str(model.get_input_embeddings().weight.dtype).removeprefix("torch.")}
    atomic_write_json(dst / STAGE, stage)
    return stage


def save_combined(model: nn.Module, tok, embed_t: dict | None, cfg: CombinedConfig, out: Path, report: dict,
                  overwrite: bool = False) -> dict:
    from .lossless.api import LosslessConfig, compress_path

    with tempfile.TemporaryDirectory(prefix="leanlm-combined-") as scratch, atomic_directory(out, overwrite) as tmp:
        staged = Path(scratch) / "staged"
        _stage(model, tok, embed_t, staged)
        staged_bytes = sum(f.stat().st_size for f in staged.rglob("*") if f.is_file())
        if Step.LOSSLESS in cfg.steps:
            inner = "packed"
            lossless = compress_path(staged, tmp / inner, LosslessConfig())
            report["lossless"] = lossless["totals"]
        else:
            inner = "plain"
            shutil.copytree(staged, tmp / inner)
        files = {str(f.relative_to(tmp)): {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
                 for f in sorted((tmp / inner).rglob("*")) if f.is_file()}
        doc = {"format": FORMAT, "kind": KIND, "format_version": FORMAT_VERSION, "inner": inner,
               "config": to_dict(cfg), "report": report, "staged_bytes": staged_bytes,
               "stored_bytes": sum(f["bytes"] for f in files.values()), "files": files, "layers": {}, "tied": []}
        atomic_write_json(tmp / "leanlm.json", doc)
    return doc


def load_combined(path: Path, doc: dict, dtype: torch.dtype = torch.bfloat16, device: str = "cpu"):
    """``(model, tok)`` from a combined directory (lossless container decoded and checked first)."""
    from .lossless.api import decompress_model

    path = Path(path)
    for rel, info in doc["files"].items():
        if sha256_file(path / rel) != info["sha256"]:
            raise ValueError(f"{path / rel}: SHA-256 does not match the manifest (corrupt or modified)")
    if doc["inner"] == "plain":
        return _load_staged(path / "plain", dtype, device)
    with tempfile.TemporaryDirectory(prefix="leanlm-combined-") as scratch:
        decompress_model(path / "packed", Path(scratch) / "staged", force=True)
        return _load_staged(Path(scratch) / "staged", dtype, device)


def _load_staged(staged: Path, dtype: torch.dtype, device: str):
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .quant.checkpoint import install_modules, load_floats

    stage = json.loads((staged / STAGE).read_text())
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(staged), dtype=dtype)
    modules = stage["modules"]
    with safe_open(str(staged / WEIGHTS), framework="pt") as f:
        floats = install_modules(model, f, modules, dtype, skip_prefix="embed.")
        if stage["embed"]:
            floats[stage["embed_key"]] = rebuild_table({k: f.get_tensor(f"embed.{k}") for k in stage["embed"]}, dtype)
    load_floats(model, floats, modules, staged)
    tok = AutoTokenizer.from_pretrained(staged)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.to(device).eval(), tok


# ----------------------------------------------------------------------------------- CLI verb
def combined_config(options: dict) -> CombinedConfig:
    extra = options.get("config")
    data = dict(extra) if isinstance(extra, dict) else json.loads(Path(extra).read_text()) if extra else {}
    if options.get("remove") is not None:
        data["embed_remove"] = options["remove"]
    cfg = from_dict(CombinedConfig, data)
    if options.get("remove") is not None and cfg.embed_method not in (EmbedMethod.SVD, EmbedMethod.WHITENED_SVD):
        raise ValueError(f"--remove sets the embedding's low-rank budget, but embed_method is "
                         f"{cfg.embed_method.value!r} (full rank); set embed_method to 'svd' or 'whitened-svd' "
                         f"in --config, or leave --remove out")
    return cfg


def compress_cli(spec: str, out: Path, options: dict) -> dict:
    """``leanlm compress SPEC --method combined [--remove F] -o OUT``: ``F`` is the embedding's removed fraction."""
    from ..models import load

    cfg = combined_config(options)
    t0 = time.perf_counter()
    model, tok = load(spec, dtype="bf16")
    embed_t, report = run_combined(model, tok, cfg)
    doc = save_combined(model, tok, embed_t, cfg, Path(out), report, overwrite=bool(options.get("force")))
    return {"output": str(out), "method": "combined", "steps": report["steps"], "staged_bytes": doc["staged_bytes"],
            "bytes_on_disk": doc["stored_bytes"], **{f"embed_{k}": v for k, v in report.get("embed", {}).items()},
            "seconds": round(time.perf_counter() - t0, 1)}
