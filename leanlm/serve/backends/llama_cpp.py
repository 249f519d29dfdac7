"""The llama.cpp backend: a GGUF decoded by llama.cpp through ``llama-cpp-python``.

The tokenizer and chat template come from the same GGUF (read by transformers), so both backends render a
conversation to the same token ids. llama-cpp-python's ``Llama`` object holds one sequence, so ``max_batch``
is 1: the scheduler then decodes one request at a time on this backend (llama-cpp-python's own server also
serves one request at a time, behind a lock); multi-sequence batches would need llama.cpp's low-level
``llama_batch`` API.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .base import TextCodec


class LlamaCppState:
    """The single sequence held in the Llama context (the KV cache lives inside llama.cpp)."""


class LlamaCppBackend:
    name = "llama_cpp"
    max_batch = 1

    def __init__(self, gguf: Path, tok, n_ctx: int = 2048, threads: int = 0):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=min(512, n_ctx), logits_all=False,
                         n_threads=threads or min(2, os.cpu_count() or 1), verbose=False)
        self.context = n_ctx
        self.text = TextCodec.of(tok, self.llm.token_eos())
        self._state: LlamaCppState | None = None

    def _logits(self) -> torch.Tensor:
        return torch.from_numpy(self.llm.scores[self.llm.n_tokens - 1].copy()).float()[None, :]

    def prefill(self, prompts: list[list[int]]):
        if len(prompts) != 1:
            raise ValueError("the llama.cpp backend holds one sequence at a time")
        self.llm.reset()
        self.llm.eval(prompts[0])
        self._state = LlamaCppState()
        return self._state, self._logits()

    def step(self, state, tokens: list[int]) -> torch.Tensor:
        if state is not self._state or len(tokens) != 1:
            raise ValueError("the llama.cpp backend steps only its one live sequence")
        self.llm.eval(tokens)
        return self._logits()

    def select(self, state, rows: list[int]):
        if rows == [0]:
            return state
        raise ValueError(f"the llama.cpp backend cannot select rows {rows} of its single sequence")

    def join(self, a, b):
        raise ValueError("the llama.cpp backend holds one sequence; it cannot join batches")

    def close(self) -> None:
        self.llm.close() if hasattr(self.llm, "close") else None
        self.llm = None


def gguf_for(source: str) -> Path:
    """The GGUF file of a spec: a ``.gguf`` path, or a packaged model's bundled GGUF."""
    from ...models.specs import PACKAGED, ModelSpecError, packaged_gguf_path

    if source in PACKAGED:
        return packaged_gguf_path(source)
    path = Path(source)
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if found:
            return found[0]
    raise ModelSpecError(f"the llama_cpp backend needs a GGUF: {source} is neither a .gguf file, a directory "
                         "holding one, nor a packaged model (export one with `leanlm export ... --target gguf`)")


def load_llama_cpp(source: str, threads: int = 0, **_) -> LlamaCppBackend:
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        raise RuntimeError("the llama_cpp backend needs llama-cpp-python: pip install llama-cpp-python") from e
    from transformers import AutoTokenizer

    gguf = gguf_for(source)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return LlamaCppBackend(gguf, tok, threads=threads)
