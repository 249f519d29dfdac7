"""The step-level backend interface the scheduler drives, and the text side every backend shares.

A backend holds one loaded model version. The scheduler calls, from its own thread only:

- ``prefill(prompts) -> (state, logits)``: encode a batch of token-id prompts; ``logits`` is ``(B, V)`` for
  each prompt's next token; ``state`` is the backend's opaque batch (KV cache, masks, positions).
- ``step(state, tokens) -> logits``: append one token per row and return the next ``(B, V)`` logits.
- ``select(state, rows) -> state``: keep these rows, in this order (a row may repeat: n choices of one
  prompt share its prefill).
- ``join(a, b) -> state``: one batch of both (requests that arrive join the running batch).

``max_batch`` is how many rows one state can hold (1 for engines without multi-sequence batches).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


class Backend(Protocol):
    name: str
    max_batch: int
    context: int                       # positions the model can attend to (prompt + completion)
    text: TextCodec

    def prefill(self, prompts: list[list[int]]) -> tuple[Any, torch.Tensor]: ...
    def step(self, state: Any, tokens: list[int]) -> torch.Tensor: ...
    def select(self, state: Any, rows: list[int]) -> Any: ...
    def join(self, a: Any, b: Any) -> Any: ...
    def close(self) -> None: ...


@dataclass
class TextCodec:
    """Tokenizer side of a version: the model's chat template, encode, decode, end-of-sequence ids."""

    tok: Any                           # a transformers tokenizer
    eos_ids: frozenset[int]            # ids that end a completion (tokenizer's and generation config's)

    @classmethod
    def of(cls, tok, extra_eos=None) -> TextCodec:
        extra = extra_eos if isinstance(extra_eos, (list, tuple)) else [extra_eos]
        return cls(tok, frozenset(i for i in (tok.eos_token_id, *extra) if i is not None))

    def chat(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation rendered by the model's own chat template, ready for the answer."""
        if getattr(self.tok, "chat_template", None):
            text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:   # no template (the tiny character models): one "role: content" line each, then the cue
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return self.encode(text)

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)
