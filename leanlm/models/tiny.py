"""Tiny transformers built from a config, with a character-level tokenizer.

For tests (seconds to build, no files) and for from-scratch experiments such as the arithmetic
self-improvement recipe. They are ordinary transformers ``LlamaForCausalLM`` models with an ordinary
``PreTrainedTokenizerFast``, so ``save_pretrained`` / ``from_pretrained`` work on them unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders
from tokenizers import models as tok_models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ..config import require

PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"
# Printable ASCII plus newline: enough for arithmetic, code-like expressions and short English.
CHARSET = "\n" + "".join(chr(c) for c in range(32, 127))


@dataclass(frozen=True)
class TinyConfig:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 256
    max_positions: int = 256
    rope: bool = True   # False: no positional encoding (NoPE) - positions come from the causal mask alone
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.hidden % self.heads == 0, f"hidden {self.hidden} must be divisible by heads {self.heads}")
        require(min(self.hidden, self.layers, self.heads, self.intermediate, self.max_positions) > 0,
                "tiny config sizes must be positive")


# Named tiny models ("architecture knowledge as data"). `tiny-add` is ~0.8M parameters.
TINY_CONFIGS: dict[str, TinyConfig] = {
    "tiny-llama": TinyConfig(),
    # NoPE: with RoPE the seed model scores 0% one digit past its training lengths (the answer-to-operand
    # distances are new), so self-labels are all wrong; NoPE transformers extrapolate addition lengths
    # (Kazemnejad et al. 2023), which the self-improvement rounds need (Lee et al. 2025).
    "tiny-add": TinyConfig(hidden=128, layers=4, heads=4, intermediate=384, max_positions=128, rope=False),
    "tiny-add-rope": TinyConfig(hidden=128, layers=4, heads=4, intermediate=384, max_positions=128),  # the ablation
}


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per character of ``CHARSET``; anything else is <unk>."""
    vocab = {tok: i for i, tok in enumerate([PAD, UNK, EOS, *CHARSET])}
    core = Tokenizer(tok_models.BPE(vocab=vocab, merges=[], unk_token=UNK))  # no merges: one char per token
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, unk_token=UNK, eos_token=EOS)
    tok.padding_side = "left"
    return tok


def build_tiny(cfg: TinyConfig, dtype: torch.dtype = torch.float32) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    tok = char_tokenizer()
    hf_cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads, intermediate_size=cfg.intermediate,
        max_position_embeddings=cfg.max_positions, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=True,
        # NoPE as an ordinary Llama config: linear RoPE scaling by 1e9 makes every rotation angle < 1e-6 rad
        **({} if cfg.rope else {"rope_parameters": {"rope_type": "linear", "factor": 1e9, "rope_theta": 10000.0}}),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(hf_cfg)
    return model.to(dtype), tok
