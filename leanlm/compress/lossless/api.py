"""Public verbs of lossless compression (the CLI, the model registry and the evolve loop call these).

``compress_cli`` / ``decompress_model`` / ``verify_model`` / ``load_model`` (whole model decoded at load)
/ ``load_lazy`` (weights decoded per layer on the fly) / ``compress_delta`` / ``decompress_delta``.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from ...config import from_dict
from . import format as fmt
from .container import ContainerReader
from .delta import DeltaParentError, compress_delta, decompress_delta
from .hooks import TORCH_DTYPES, CodedTensor, LazyWeights, keep_coded, unit_parameter_names
from .store import LosslessConfig, build, read_manifest, restore, verify

log = logging.getLogger(__name__)

__all__ = ["compress_cli", "compress_path", "decompress_model", "verify_model", "load_model", "load_lazy",
           "compress_delta", "decompress_delta", "DeltaParentError", "LosslessConfig", "NotACausalLMError"]


class NotACausalLMError(ValueError):
    """The artifact holds weights that are not a causal language model (e.g. an encoder)."""


def _source(spec: str | Path) -> Path:
    path = Path(spec).expanduser()
    if path.exists():
        return path
    from ...models import model_dir

    d = model_dir(str(spec))
    if d is None:
        raise ValueError(f"'{spec}' is built in memory and has no files; save it with save_pretrained first")
    return d


def compress_path(src: str | Path, out: Path, cfg: LosslessConfig = LosslessConfig(), force: bool = False) -> dict:
    """Compress a model directory, a directory of safetensors files, or one safetensors file."""
    return build(_source(src), Path(out), cfg, overwrite=force)


def compress_cli(spec: str, out: Path, options: dict) -> dict:
    """``leanlm compress SPEC --method lossless -o OUT [--force]``."""
    names = {f.name for f in dataclasses.fields(LosslessConfig)}
    cfg = from_dict(LosslessConfig, {k: v for k, v in options.items() if k in names and v is not None})
    m = compress_path(spec, Path(out), cfg, force=bool(options.get("force")))
    t = m["totals"]
    return {"output": str(out), "format": m["format"], "files": len(m["files"]),
            "original_bytes": t["original_bytes"], "stored_bytes": t["stored_bytes"],
            "weights_ratio": t["weights_ratio"], "seconds": t["seconds"]}


def decompress_model(path: str | Path, output: str | Path, force: bool = False, threads: int = 0) -> dict:
    """Write the original directory back; every file is checked against its sha256."""
    return restore(Path(path), Path(output), force, LosslessConfig(threads=threads).n_threads())


def verify_model(path: str | Path, against: str | Path | None = None, threads: int = 0) -> dict:
    """Decode everything and re-check every checksum; with ``against``, compare to that model's files."""
    other = _source(against) if against is not None else None
    if other is not None and other.is_file():
        other = other.parent
    return verify(Path(path), other, LosslessConfig(threads=threads).n_threads())


def _readers(path: Path, manifest: dict) -> list[ContainerReader]:
    return [ContainerReader(path / fmt.check_relpath(e["container"], str(path)))
            for e in manifest["files"] if e["store"] == "safetensors"]


def _model_class(path: Path, manifest: dict):
    from transformers import AutoConfig, AutoModelForCausalLM

    data = path / fmt.DATA_DIR
    if not any(e["path"] == "config.json" for e in manifest["files"]):
        raise NotACausalLMError(f"{path} holds weights without a config.json (not a model directory); "
                                f"restore the files with `leanlm decompress {path} -o DIR`")
    config = AutoConfig.from_pretrained(data)
    cls = AutoModelForCausalLM._model_mapping.get(type(config), None)
    archs = getattr(config, "architectures", None) or []
    if cls is None or not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise NotACausalLMError(f"{path} holds a {archs or type(config).__name__} model, not a causal LM; "
                                f"`leanlm.load` runs causal LMs only - restore the original files with "
                                f"`leanlm decompress {path} -o DIR` and load DIR with its own library")
    return cls, config


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path / fmt.DATA_DIR)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: Path, dtype: torch.dtype = torch.bfloat16, device: str = "cpu", on_the_fly: bool = False,
               threads: int = 0):
    """Decode (checksums verified) and build ``(model, tokenizer)``; ``on_the_fly`` -> ``load_lazy``."""
    if on_the_fly:
        return load_lazy(path, dtype, device, threads)
    path = Path(path)
    manifest = read_manifest(path, "model")
    cls, config = _model_class(path, manifest)
    threads = threads or LosslessConfig().n_threads()
    state = {}
    for reader in _readers(path, manifest):
        part = {name: torch.empty(reader.tensors[name]["shape"], dtype=TORCH_DTYPES[reader.tensors[name]["dtype"]])
                for name in reader.order}
        reader.decode_all({n: t.view(-1).view(torch.uint8).numpy() for n, t in part.items() if t.numel()},
                          threads=threads, verify=True)
        state.update(part)
    model = cls.from_pretrained(None, config=config, state_dict=state, dtype=dtype)
    # Cast buffers too (rotary inv_freq), exactly as leanlm.load does for a plain model directory, so the
    # decoded model computes the very same logits as the original loaded the usual way.
    return model.to(device=device, dtype=dtype).eval(), _tokenizer(path)


def load_lazy(path: Path, dtype: torch.dtype = torch.bfloat16, device: str = "cpu", threads: int = 0):
    """Like ``load_model``, but each decoder layer's (and the embedding's / head's) weights stay coded in
    memory and are decoded just before the layer runs, then freed; ``model.lazy_weights`` is the controller.

    The model is built with empty (meta) parameters, so the full set of decoded weights never exists at
    once: every tensor is decoded once at load to check its checksum, then only the coded planes are kept."""
    from accelerate import init_empty_weights
    from transformers import GenerationConfig

    path = Path(path)
    manifest = read_manifest(path, "model")
    cls, config = _model_class(path, manifest)
    threads = threads or LosslessConfig().n_threads()
    with init_empty_weights(include_buffers=False):   # parameters on meta, buffers (rotary) computed
        model = cls._from_config(config, dtype=dtype)
    model.to(dtype=dtype)   # buffers cast as leanlm.load does
    managed = unit_parameter_names(model)
    coded, eager = {}, {}
    for reader in _readers(path, manifest):
        for name in reader.order:
            meta = reader.tensors[name]
            data = reader.decode(name, threads=threads)          # verifies the checksum
            enc = reader.coded(name) if name in managed else None
            if enc is not None:
                coded[name] = CodedTensor(keep_coded(enc), meta["dtype"], tuple(meta["shape"]))
                continue
            data = data if data.flags.writeable else data.copy()
            t = torch.from_numpy(data).view(TORCH_DTYPES[meta["dtype"]]).reshape(meta["shape"])
            eager[name] = t.to(dtype) if t.is_floating_point() else t
    for name, _ in list(model.named_parameters(remove_duplicate=False)):
        if name in eager or name in coded:
            mod, _, leaf = name.rpartition(".")
            value = eager[name] if name in eager else torch.empty(0, dtype=dtype)
            setattr(model.get_submodule(mod), leaf, torch.nn.Parameter(value, requires_grad=False))
    model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise fmt.FormatError(f"{path}: the container lacks weights for {missing[:5]}")
    if (path / fmt.DATA_DIR / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path / fmt.DATA_DIR)
    model = model.to(device).eval()
    model.lazy_weights = LazyWeights(model, coded, dtype, threads)
    return model, _tokenizer(path)
