"""GGUF metadata built from a Hugging Face config and tokenizer, for models that did not come from a GGUF.

Covers the Llama family with a BPE tokenizer (``tokenizer.ggml.model = gpt2``), the keys llama.cpp's
converter writes for it. The pre-tokenizer is named from ``PRE_TOKENIZERS`` when the vocabulary is one
we know, else ``default`` (llama.cpp then splits words its default way). Other families raise an error
naming what is missing: export those from their GGUF, whose metadata is copied instead.
"""
from __future__ import annotations

import json

import gguf

# llama.cpp's name for a known BPE vocabulary's pre-tokenizer, keyed by (vocab size, first added token)
PRE_TOKENIZERS = {(49152, "<|endoftext|>"): "smollm"}


def _merges(tok) -> list[str]:
    model = json.loads(tok.backend_tokenizer.to_str()).get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(f"GGUF metadata from a HF tokenizer needs a BPE tokenizer, not {model.get('type')}")
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def write_hf_metadata(model, tok, writer: gguf.GGUFWriter, name: str = "leanlm export") -> int:
    """Write llama-architecture hyperparameters and a gpt2-style tokenizer; returns the number of keys."""
    c = model.config
    if c.model_type not in ("llama", "mistral"):
        raise ValueError(f"building GGUF metadata from a HF config supports llama-family models, not "
                         f"'{c.model_type}'; export from the model's GGUF instead (its metadata is copied)")
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rope = getattr(c, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))
    writer.add_name(name)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(c.vocab_size)
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    vocab = tok.get_vocab()
    tokens = [""] * c.vocab_size
    for t, i in vocab.items():
        if i < c.vocab_size:
            tokens[i] = t
    tokens = [t or f"[PAD{i}]" for i, t in enumerate(tokens)]
    special = set(tok.all_special_tokens) | {str(t) for t in getattr(tok, "added_tokens_decoder", {}).values()}
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    first_added = min(getattr(tok, "added_tokens_decoder", {}) or [0])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZERS.get((c.vocab_size, tokens[first_added]), "default"))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(tok))
    n = 17
    for key, tid in (("bos", tok.bos_token_id), ("eos", tok.eos_token_id), ("pad", tok.pad_token_id),
                     ("unk", tok.unk_token_id)):
        if tid is not None:
            getattr(writer, f"add_{key}_token_id")(tid)
            n += 1
    writer.add_add_bos_token(bool(tok.bos_token_id is not None and
                                  tok("a", add_special_tokens=True)["input_ids"][:1] == [tok.bos_token_id]))
    if getattr(tok, "chat_template", None):
        writer.add_chat_template(tok.chat_template)
        n += 1
    return n
