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


def _point_at_built_library() -> None:
    """``make llama-cpp-python`` installs the bindings without a library of their own (``LLAMA_BUILD=OFF``):
    they then load ``libllama.so`` from the tools ``make llama-cpp`` built, named here unless the user set
    ``LLAMA_CPP_LIB_PATH`` or the bindings carry their own library."""
    import importlib.util

    if os.environ.get("LLAMA_CPP_LIB_PATH"):
        return
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise ImportError("llama-cpp-python is not installed: run `make llama-cpp-python` (or pip install it)")
    if list((Path(spec.origin).parent / "lib").glob("libllama*")):
        return
    from ...export.llamacpp import bin_dirs

    for d in bin_dirs():
        if (d / "libllama.so").is_file():
            os.environ["LLAMA_CPP_LIB_PATH"] = str(d)
            return
    raise ImportError("llama-cpp-python has no libllama.so: run `make llama-cpp` (or set LLAMA_CPP_LIB_PATH)")


class LlamaCppState:
    """The single sequence held in the Llama context (the KV cache lives inside llama.cpp)."""


class LlamaCppBackend:
    name = "llama_cpp"
    max_batch = 1

    def __init__(self, gguf: Path, tok, n_ctx: int = 2048, threads: int = 0):
        _point_at_built_library()
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=min(512, n_ctx), logits_all=False,
                         n_threads=threads or min(2, os.cpu_count() or 1), verbose=False)
        self.context = n_ctx
        self.text = TextCodec.of(tok, self.llm.token_eos())
        self._state: LlamaCppState | None = None

    def _logits(self) -> torch.Tensor:
        # the last evaluated token's logits, read from the context (llama-cpp-python >= 0.3 keeps `scores` only
        # with logits_all=True, which would store a row per prompt token)
        import numpy as np

        ptr = self.llm._ctx.get_logits_ith(-1)
        row = np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),))
        return torch.from_numpy(row.copy()).float()[None, :]

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
        _point_at_built_library()
        import llama_cpp  # noqa: F401
    except (ImportError, FileNotFoundError) as e:
        raise RuntimeError(f"the llama_cpp backend needs llama-cpp-python and libllama ({e}): run "
                           "`make llama-cpp-python`, or pip install llama-cpp-python") from e
    from transformers import AutoTokenizer

    gguf = gguf_for(source)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return LlamaCppBackend(gguf, tok, threads=threads)
