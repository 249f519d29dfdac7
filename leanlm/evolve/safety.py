"""Safety in the loop: refusal and over-refusal measured on held-out prompts, paired bootstrap intervals
against generation 0, and the refusal examples (train part only) that safety tuning and replay train on.

Sets (``leanlm.eval.safety``): harmful = HarmBench + AdvBench, held-out part (a fixed hash-ordered subset
of ``n`` prompts for the gate); benign = our over-refusal prompts, held-out part. A response counts as a
refusal by ``leanlm.eval.refusal.refused`` (rule v2, plus the off-topic check when ``relevance``).
"""
from __future__ import annotations

import random

from ..eval import safety as sets
from ..eval.generate import format_prompt
from ..eval.refusal import refused
from .solve import greedy
from .train import Example

REFUSAL_TOKENS = 48


def gate_prompts(n_harmful: int) -> tuple[list[str], list[str]]:
    """(harmful, benign) held-out prompts the gate scores: ``n_harmful`` harmful ones (0 = all) and every
    held-out over-refusal prompt."""
    return (sets.spaced(sets.harmful_prompts(sets.HELDOUT), n_harmful),
            sets.over_refusal_prompts(sets.HELDOUT))


def measure(model, tok, n_harmful: int, relevance: bool = True, batch_size: int = 16,
            progress: bool = True, sampler=None) -> dict:
    """Refusal rate on held-out harmful prompts and over-refusal rate on held-out benign ones, with the
    per-prompt outcomes (for paired bootstrap intervals against generation 0)."""
    harmful, benign = gate_prompts(n_harmful)
    prompts = harmful + benign
    outs = sampler.greedy(prompts, REFUSAL_TOKENS, batch_size=batch_size, progress=progress, desc="safety") \
        if sampler is not None else greedy(model, tok, prompts, REFUSAL_TOKENS, batch_size=batch_size,
                                           progress=progress, desc="safety")
    flags = refused(prompts, outs, relevance_check=relevance)
    h, b = flags[:len(harmful)], flags[len(harmful):]
    return {"refusal_heldout": sum(h) / len(h), "over_refusal": sum(b) / len(b),
            "refused_heldout": [int(x) for x in h], "over_refused": [int(x) for x in b],
            "safety_samples": {"harmful": outs[:3], "benign": outs[len(harmful):len(harmful) + 3]}}


def paired_bootstrap(cand: list[int], base: list[int], n: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Mean of ``cand - base`` over paired 0/1 outcomes, with a percentile bootstrap interval."""
    if len(cand) != len(base) or not cand:
        raise ValueError(f"paired bootstrap needs equal non-empty lists ({len(cand)} vs {len(base)})")
    d = [c - b for c, b in zip(cand, base)]
    rng = random.Random(f"bootstrap/{seed}")
    means = sorted(sum(rng.choices(d, k=len(d))) / len(d) for _ in range(n))
    lo, hi = means[int((1 - level) / 2 * n)], means[min(n - 1, int((1 + level) / 2 * n))]
    return {"diff": sum(d) / len(d), "lo": lo, "hi": hi, "n": len(d), "level": level}


def refusal_examples(tok, prompts: list[str]) -> list[Example]:
    """Our refusal (``safety.refusal_for``) to each prompt, as SFT examples; train-part prompts only."""
    bad = [p for p in prompts if sets.split_of(p) != sets.TRAIN]
    if bad:
        raise ValueError(f"{len(bad)} held-out prompts given for training, e.g. {bad[0][:60]!r}")
    return [Example(format_prompt(tok, p), sets.refusal_for(p)) for p in prompts]


def replay_examples(pool: list[Example], n: int, seed: int) -> list[Example]:
    """``n`` examples of the safety pool (seeded draw) for one generation's training mix."""
    return random.Random(f"safety-replay/{seed}").sample(pool, min(n, len(pool))) if n > 0 else []
