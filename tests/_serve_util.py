"""Helpers shared by the serve tests: a tiny evolve run written through lineage, a server on a free port."""
from __future__ import annotations

import time
from pathlib import Path

from leanlm.evolve import lineage
from leanlm.evolve.config import EvolveConfig
from leanlm.models.tiny import TinyConfig, build_tiny
from leanlm.serve.config import ServeConfig

KEY = "test-key-123"


def tiny_cfg(**kw) -> ServeConfig:
    base = dict(port=0, dtype="fp32", threads=1, max_tokens_limit=200, max_prompt_tokens=120, poll_s=0.2)
    return ServeConfig(**{**base, **kw})


def write_generation(run: Path, g: int, accepted: bool = True, seed: int | None = None) -> None:
    """Generation ``g`` of a tiny run: gen 0 is the registry spec itself, later ones a tiny model of their
    own seed (different weights, so which version answered is visible in the tokens)."""
    rec = {"generation": g, "parent": g - 1 if g else None, "accepted": accepted,
           "metrics": {"headline": 0.1 * g, "retention": 1.0, "ppl": 10.0 - g}}
    if g == 0:
        lineage.save_generation(run, {**rec, "model_source": "tiny-llama"}, [], [])
        return
    model, tok = build_tiny(TinyConfig(seed=seed if seed is not None else g))
    lineage.save_generation(run, rec, [], [], model=model, tok=tok)


def tiny_run(root: Path, gens: int = 1) -> Path:
    run = root / "tinyrun"
    lineage.init_run(run, EvolveConfig(spec="tiny-llama"))
    for g in range(gens):
        write_generation(run, g)
    return run


def wait_for(cond, timeout: float = 20.0, every: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return False
