"""Which linear layers of each architecture are decomposed, and which of them share an input.

Architecture knowledge as data: for each ``model_type`` the attribute path of the decoder layers and the
groups of linears (relative to one decoder layer) that read the same input. Layers in one group share one
input covariance, so whitened SVD computes one Cholesky factor per group.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Arch:
    layers: str                              # attribute path of the decoder layer list
    groups: tuple[tuple[str, ...], ...]      # linears (relative names) that read the same input
    embedding: str = "model.embed_tokens"


_LLAMA = Arch(
    layers="model.layers",
    groups=(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
            ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",)),
)
ARCHS: dict[str, Arch] = {"llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA}


def arch_of(model: nn.Module) -> Arch:
    mtype = getattr(getattr(model, "config", None), "model_type", None)
    if mtype not in ARCHS:
        raise ValueError(f"low-rank decomposition does not know architecture '{mtype}'; known: {sorted(ARCHS)}")
    return ARCHS[mtype]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(arch_of(model).layers)


def target_names(model: nn.Module, include: tuple[str, ...] = ()) -> list[str]:
    """Full names of the decomposable linears, layer by layer; ``include`` keeps names containing any entry."""
    arch = arch_of(model)
    names = [f"{arch.layers}.{i}.{rel}" for i in range(len(decoder_layers(model)))
             for group in arch.groups for rel in group]
    return [n for n in names if not include or any(s in n for s in include)]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where ``name`` is (the one way this package changes a model)."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
