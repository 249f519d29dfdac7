"""The model answers: greedy for probes and gates, k samples at temperature > 0 for training data."""
from __future__ import annotations

from ..eval.generate import GenerationConfig, generate


def answers(model, tok, prompts: list[str], k: int, temperature: float, max_new_tokens: int, seed: int,
            chat: bool | None = None, batch_size: int = 16, progress: bool = True, desc: str = "solve",
            top_p: float = 1.0) -> list[list[str]]:
    """``k`` answers per prompt. ``temperature=0`` gives one greedy answer (k must be 1)."""
    if temperature == 0 and k != 1:
        raise ValueError("greedy decoding gives one answer per prompt; use temperature > 0 for k > 1")
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=max(1, batch_size // k) if k > 1 else batch_size,
                           temperature=temperature, top_p=top_p, num_samples=k, chat=chat, seed=seed)
    return generate(model, tok, prompts, cfg, progress=progress, desc=desc)


def greedy(model, tok, prompts: list[str], max_new_tokens: int, chat: bool | None = None, batch_size: int = 16,
           progress: bool = True, desc: str = "greedy") -> list[str]:
    return [o[0] for o in answers(model, tok, prompts, 1, 0.0, max_new_tokens, 0, chat, batch_size, progress, desc)]
