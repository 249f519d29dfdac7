"""Calibration statistics for the GGUF quantiser: the second moment of every weight matrix's inputs.

``input_moments`` runs the float model over calibration windows once and accumulates ``H = X^T X / n``
for each linear layer (linears that read the same input, per ``models.arch``'s scale groups, share one
``H``) and for the output head (the final norm's output). The diagonal of ``H`` is what llama.cpp's
``llama-imatrix`` collects; GPTQ uses all of it. The windows are consecutive, so ``llama-imatrix`` run on
the same text file sees the same tokens.
"""
from __future__ import annotations

import logging

import torch
from tqdm import tqdm

from ..models.arch import arch_for, decoder_layers
from .gguf_source import gguf_name, layout_for, name_map

log = logging.getLogger(__name__)


def calibration_windows(tok, text: str, seq_len: int = 512, max_windows: int = 32) -> torch.Tensor:
    """``(n, seq_len)`` consecutive windows of ``text``, each starting with BOS where the model expects one."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    probe = tok("a", add_special_tokens=True)["input_ids"]
    bos = [tok.bos_token_id] if tok.bos_token_id is not None and probe and probe[0] == tok.bos_token_id else []
    step = seq_len - len(bos)
    n = min(len(ids) // step, max_windows)
    if n < 1:
        raise ValueError(f"calibration text has {len(ids)} tokens; need at least {step}")
    return torch.tensor([bos + ids[i * step:(i + 1) * step] for i in range(n)], dtype=torch.long)


def _targets(model) -> dict[str, list[str]]:
    """HF module to hook -> GGUF tensor names that read its input."""
    arch = arch_for(model)
    layout = layout_for(model)
    nmap = name_map(model, layout)
    out: dict[str, list[str]] = {}
    for i in range(len(decoder_layers(model, arch))):
        prefix = f"{arch.layers}.{i}."
        for g in arch.groups:
            names = [gguf_name(nmap, prefix + lin + ".weight") for lin in g.linears]
            out[prefix + g.linears[0]] = [n for n in names if n]
    head = "token_embd.weight" if getattr(model.config, "tie_word_embeddings", False) else "output.weight"
    out[arch.final_norm] = [head]
    return out


@torch.no_grad()
def input_moments(model, ids: torch.Tensor, batch: int = 4) -> dict[str, torch.Tensor]:
    """``{gguf tensor name: H (cols, cols) float32}`` from one pass over ``ids`` (n, seq_len)."""
    targets = _targets(model)
    acc: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}

    def make_hook(key: str, on_output: bool):
        def hook(_m, args, output=None):
            x = output if on_output else args[0]
            x = x.reshape(-1, x.shape[-1]).to(torch.float32)
            h = x.T @ x
            acc[key] = acc[key] + h.to(torch.float64) if key in acc else h.to(torch.float64)
            count[key] = count.get(key, 0) + x.shape[0]
        return hook

    handles = []
    arch = arch_for(model)
    for mod_name in targets:
        mod = model.get_submodule(mod_name)
        if mod_name == arch.final_norm:
            handles.append(mod.register_forward_hook(make_hook(mod_name, True)))
        else:
            handles.append(mod.register_forward_pre_hook(make_hook(mod_name, False)))
    base = model.get_submodule(arch.layers.rsplit(".", 1)[0])   # skip the output head's logits
    try:
        for s in tqdm(range(0, ids.shape[0], batch), desc="calibration", leave=False):
            base(input_ids=ids[s:s + batch], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for mod_name, names in targets.items():
        H = (acc[mod_name] / count[mod_name]).to(torch.float32)
        for n in names:
            out[n] = H
    log.info("calibration: %d windows x %d tokens, %d input moments", ids.shape[0], ids.shape[1], len(acc))
    return out
