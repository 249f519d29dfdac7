"""What a GGUF export starts from: the model's float weights under GGUF names, and its metadata.

Weights come from the transformers model (float32; a GGUF source is loaded straight from its file so
nothing passes through bf16), renamed with gguf-py's ``TensorNameMap`` and changed back to llama.cpp's
conventions the way its converter (``convert_hf_to_gguf.py``) does:

- ``LAYOUT`` (data): Llama-family q/k rows are permuted from the HF half-split rotary order to GGML's
  interleaved order; Gemma's RMSNorm weights are stored as ``1 + w``; tied embeddings mean no
  ``output.weight``.
- Metadata and tokenizer are copied from a *reference GGUF* when the model came from one (a ``.gguf``
  spec, a packaged model, leanlm's cache of one, or a leanlm artifact made from one), otherwise built
  from the HF config and tokenizer (``gguf_meta``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from ..models.load import CACHE_MARKER, MANIFEST, resolve
from ..models.specs import packaged_gguf_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    gguf_arch: str            # general.architecture
    permute_qk: bool          # HF rotary half-split -> GGML interleaved rows (llama.cpp's converter)
    norm_shift: float = 0.0   # added to every *norm.weight (Gemma stores 1 + w)


# model_type -> how its tensors differ between HF and GGUF
LAYOUT: dict[str, Layout] = {
    "llama": Layout("llama", permute_qk=True),
    "mistral": Layout("llama", permute_qk=True),
    "gemma3_text": Layout("gemma3", permute_qk=False, norm_shift=1.0),
}


def layout_for(model) -> Layout:
    mt = model.config.model_type
    if mt not in LAYOUT:
        raise ValueError(f"GGUF export knows model types {sorted(LAYOUT)}, not '{mt}'")
    return LAYOUT[mt]


def permute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF (n_head, 2, d/2) rotary row order -> GGML (n_head, d/2, 2); llama.cpp's ``LlamaModel.permute``."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def name_map(model, layout: Layout) -> gguf.TensorNameMap:
    arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == layout.gguf_arch)
    return gguf.get_tensor_name_map(arch, model.config.num_hidden_layers)


def gguf_name(nmap: gguf.TensorNameMap, hf_name: str) -> str | None:
    return nmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))


def gguf_tensors(model, state: dict[str, torch.Tensor] | None = None) -> dict[str, np.ndarray]:
    """Float32 arrays under GGUF names, in llama.cpp's row conventions. Tied lm_head is left out.
    ``state`` (HF names, e.g. per-weight sensitivities) is laid out the same way instead of the weights,
    without the norm shift (which belongs to weight values only)."""
    layout = layout_for(model)
    nmap, cfg = name_map(model, layout), model.config
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    values = state is None
    out: dict[str, np.ndarray] = {}
    for hf_name, t in (model.state_dict() if values else state).items():
        if tied and hf_name == "lm_head.weight":
            continue
        name = gguf_name(nmap, hf_name)
        if name is None:
            raise ValueError(f"no GGUF name for tensor '{hf_name}' ({layout.gguf_arch})")
        w = t.detach().to(torch.float32)
        if layout.permute_qk and name.endswith("attn_q.weight"):
            w = permute_rows(w, cfg.num_attention_heads)
        elif layout.permute_qk and name.endswith("attn_k.weight"):
            w = permute_rows(w, cfg.num_key_value_heads)
        if values and layout.norm_shift and name.endswith("norm.weight"):
            w = w + layout.norm_shift
        out[name] = w.contiguous().numpy()
    return out


def reference_gguf(spec: str) -> Path | None:
    """The GGUF a spec's model came from, if any (for metadata, tokenizer and exact source blocks)."""
    kind, path = resolve(spec)
    if kind == "gguf":
        return path
    if kind == "packaged":
        return packaged_gguf_path(spec)
    if kind == "hf" and (path / CACHE_MARKER).is_file():
        src = json.loads((path / CACHE_MARKER).read_text()).get("gguf")
        return Path(src) if src and Path(src).is_file() else None
    if kind == "artifact":
        manifest = json.loads((path / MANIFEST).read_text())
        src = manifest.get("source") or manifest.get("spec") or (manifest.get("config") or {}).get("spec")
        if isinstance(src, str) and src != spec:
            try:
                return reference_gguf(src)
            except ValueError:
                return None
    return None


def unpermute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of ``permute_rows``: GGML interleaved rotary rows back to HF's half-split order."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_arrays(reader: gguf.GGUFReader) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF dequantised to float32, numpy (rows, cols) order, in file order."""
    out = {}
    for t in reader.tensors:
        shape = tuple(int(x) for x in reversed(t.shape))
        out[t.name] = dequantised(t.tensor_type.name, np.asarray(t.data)).reshape(shape).astype(np.float32)
    return out


def _gguf_tokenizer(path: Path):
    """The tokenizer transformers builds from a GGUF, cached beside leanlm's models (building it can take minutes)."""
    from transformers import AutoTokenizer

    from ..fileio import atomic_directory
    from ..models.specs import cache_dir

    target = cache_dir() / "gguf-tokenizers" / f"{path.stem}-{path.stat().st_size}"
    if not (target / "tokenizer_config.json").is_file():
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        with atomic_directory(target, overwrite=True) as tmp:
            tok.save_pretrained(tmp)
    return AutoTokenizer.from_pretrained(target)


def load_gguf_model(path: Path):
    """(float32 model, tokenizer, GGUF arrays): weights taken exactly from the GGUF's blocks."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..models.load import _finish

    reader = gguf.GGUFReader(str(path))
    arrays = gguf_arrays(reader)
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    layout = layout_for(model)
    nmap, cfg = name_map(model, layout), model.config
    state = {}
    for hf_name, t in model.state_dict().items():
        name = gguf_name(nmap, hf_name)
        if name == "output.weight" and name not in arrays:
            name = "token_embd.weight"                       # tied head
        if name not in arrays:
            raise ValueError(f"{path} has no tensor '{name}' for '{hf_name}'")
        w = torch.from_numpy(arrays[name].copy())
        if layout.norm_shift and name.endswith("norm.weight"):
            w = w - layout.norm_shift
        if layout.permute_qk and name.endswith("attn_q.weight"):
            w = unpermute_rows(w, cfg.num_attention_heads)
        elif layout.permute_qk and name.endswith("attn_k.weight"):
            w = unpermute_rows(w, cfg.num_key_value_heads)
        state[hf_name] = w.reshape(t.shape)
    model.load_state_dict(state, strict=True)
    model, tok = _finish(model, _gguf_tokenizer(path), torch.float32, "cpu")
    return model, tok, arrays


def load_float_model(spec: str):
    """(float32 model, tokenizer, GGUF-named arrays). A GGUF source's arrays are its own blocks decoded."""
    from ..models.load import load

    kind, path = resolve(spec)
    if kind in ("packaged", "gguf"):
        return load_gguf_model(packaged_gguf_path(spec) if kind == "packaged" else path)
    model, tok = load(spec, dtype="fp32", device="cpu")
    return model, tok, gguf_tensors(model)


SKIP_KEYS = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version")


def copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter) -> int:
    """Copy every key/value of ``reader`` except the header and what describes the tensors' types."""
    n = 0
    for key, field in reader.fields.items():
        if key.startswith(SKIP_KEYS):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        val = field.contents()
        writer.add_key_value(key, val, vtype, sub_type=sub)
        n += 1
    return n


def source_blocks(reader: gguf.GGUFReader) -> dict[str, tuple[str, np.ndarray]]:
    """``{name: (type name, raw block bytes as (rows, bytes_per_row))}`` of a GGUF's tensors."""
    out = {}
    for t in reader.tensors:
        rows = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
        out[t.name] = (t.tensor_type.name, np.asarray(t.data).reshape(rows, -1))
    return out


def dequantised(qtype: str, raw: np.ndarray) -> np.ndarray:
    return gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])
