"""Architecture tables: where the decoder blocks are, which module feeds which linear layers.

Algorithms that move scales between layers (SmoothQuant, AWQ) or that quantise "every linear in a
block" read these tables instead of testing classes. One ``ArchSpec`` per family, looked up by
``model.config.model_type``. Names are relative to one decoder block unless they say otherwise.

A ``ScaleGroup`` says: the output channels of ``prev`` are the input channels of every module in
``linears``, with nothing non-linear per channel in between, so ``prev``'s output can be divided by a
per-channel scale ``s`` and each linear's weight columns multiplied by ``s`` without changing the
function. ``prev`` is either an RMSNorm (its weight absorbs ``1/s``; Gemma's norms compute
``x * (1 + w)``, hence ``norm_offset``) or a linear (its output rows absorb ``1/s``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


class UnknownArchitectureError(KeyError):
    """A model family with no entry in ``ARCHITECTURES``; the message lists the known ones."""


@dataclass(frozen=True)
class ScaleGroup:
    prev: str                     # norm or linear whose output feeds ``linears``
    linears: tuple[str, ...]      # linears sharing that input
    prev_is_norm: bool = True
    inspect: str | None = None    # module whose output measures the group's quantisation error (AWQ)


@dataclass(frozen=True)
class ArchSpec:
    name: str
    layers: str                   # dotted path from the CausalLM to the ModuleList of decoder blocks
    linears: tuple[str, ...]      # every linear inside a block, in execution order
    groups: tuple[ScaleGroup, ...]
    softmax_inputs: tuple[str, ...] = ()   # linears whose outputs enter attention scores (q, k)
    norm_offset: float = 0.0      # RMSNorm computes x_hat * (norm_offset + weight)
    final_norm: str = "model.norm"
    embed: str = "model.embed_tokens"
    lm_head: str = "lm_head"


_ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_MLP_IN = ("mlp.gate_proj", "mlp.up_proj")

LLAMA = ArchSpec(
    name="llama",
    layers="model.layers",
    linears=(*_ATTN, "self_attn.o_proj", *_MLP_IN, "mlp.down_proj"),
    groups=(
        ScaleGroup("input_layernorm", _ATTN),
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), prev_is_norm=False),
        ScaleGroup("post_attention_layernorm", _MLP_IN, inspect="mlp"),
        ScaleGroup("mlp.up_proj", ("mlp.down_proj",), prev_is_norm=False),
    ),
    softmax_inputs=("self_attn.q_proj", "self_attn.k_proj"),
)

# Gemma 3: the attention output and MLP output each pass a post-norm before the residual add, so the
# MLP's input norm is ``pre_feedforward_layernorm``; norms scale by (1 + weight).
GEMMA3 = ArchSpec(
    name="gemma3",
    layers="model.layers",
    linears=LLAMA.linears,
    groups=(
        ScaleGroup("input_layernorm", _ATTN),
        ScaleGroup("self_attn.v_proj", ("self_attn.o_proj",), prev_is_norm=False),
        ScaleGroup("pre_feedforward_layernorm", _MLP_IN, inspect="mlp"),
        ScaleGroup("mlp.up_proj", ("mlp.down_proj",), prev_is_norm=False),
    ),
    softmax_inputs=LLAMA.softmax_inputs,
    norm_offset=1.0,
)
GEMMA3_MULTIMODAL = dataclasses.replace(GEMMA3, name="gemma3-mm", layers="model.language_model.layers",
                                        final_norm="model.language_model.norm",
                                        embed="model.language_model.embed_tokens")

# model_type -> spec. Mistral and Qwen2 share Llama's block layout (Qwen2's q/k/v biases do not
# change the scale algebra: W diag(s) (x / s) + b = W x + b).
ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "gemma3_text": GEMMA3,
    "gemma3": GEMMA3_MULTIMODAL,
}


def arch_for(model_or_type: torch.nn.Module | str) -> ArchSpec:
    """The table entry for a model (by ``model.config.model_type``) or a model_type string."""
    if isinstance(model_or_type, str):
        mt = model_or_type
    else:
        mt = getattr(model_or_type.config, "model_type", None)
    if mt not in ARCHITECTURES:
        raise UnknownArchitectureError(f"no architecture table for model_type '{mt}'; "
                                       f"known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[mt]


def decoder_layers(model: torch.nn.Module, arch: ArchSpec | None = None) -> torch.nn.ModuleList:
    arch = arch or arch_for(model)
    return model.get_submodule(arch.layers)
