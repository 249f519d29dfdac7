"""Evaluate a model on code problems: replies through the chat template, programs run in the sandbox,
pass@1 (greedy) and pass@k (sampled) under strict and repaired scoring, and what went wrong.

pass@k uses the unbiased estimator of Chen et al. 2021 (HumanEval): with n samples of which c pass,
1 - C(n - c, k) / C(n, k); with n = k it is the share of problems with at least one passing sample.
Error categories are the sandbox status, refined by the exception type (``error:SyntaxError``,
``error:NameError``, ``fail`` for a wrong answer, ``timeout`` ...), counted per scoring mode.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from .codetasks import CodeProblem, program
from .generate import GenerationConfig, generate
from .sandbox import Limits, Verdict, run_many

MODES = ("strict", "repaired")


@dataclass(frozen=True)
class CodeEvalConfig:
    max_new_tokens: int = 256
    batch_size: int = 8
    samples: int = 0              # k sampled replies per problem for pass@k (0 = greedy only)
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 0
    timeout_s: float = 5.0
    memory_mb: int = 512
    workers: int = 2              # sandbox subprocesses at a time

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.samples < 0:
            raise ValueError("max_new_tokens and batch_size must be >= 1, samples >= 0")
        if self.samples and self.temperature <= 0:
            raise ValueError("sampled replies need temperature > 0")


def pass_at_k(n: int, c: int, k: int) -> float:
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def category(v: Verdict) -> str:
    if v.status in ("error", "blocked") and ":" in v.detail:
        return f"{v.status}:{v.detail.split(':', 1)[0].strip()[:40]}"
    return v.status


def verdicts(problems: list[CodeProblem], replies: list[list[str]], cfg: CodeEvalConfig) -> dict[str, list[list[Verdict]]]:
    """Sandbox verdicts per mode: ``out[mode][i][j]`` for reply j of problem i."""
    limits = Limits(timeout_s=cfg.timeout_s, memory_mb=cfg.memory_mb)
    flat = [(i, r) for i, rs in enumerate(replies) for r in rs]
    out = {}
    for mode in MODES:
        vs = run_many([(program(problems[i], r, mode), list(problems[i].tests)) for i, r in flat], limits, cfg.workers)
        per: list[list[Verdict]] = [[] for _ in problems]
        for (i, _), v in zip(flat, vs):
            per[i].append(v)
        out[mode] = per
    return out


def summarize(problems: list[CodeProblem], vs: dict[str, list[list[Verdict]]], k: int | None = None) -> dict:
    """pass@1 (first reply) or pass@k, per mode, overall and per family; error categories; mean test share."""
    res: dict = {"n": len(problems)}
    for mode in MODES:
        per = vs[mode]
        if k is None:
            scores = [float(v[0].full) for v in per]
        else:
            scores = [pass_at_k(len(v), sum(x.full for x in v), k) for v in per]
        fam: dict[str, list[float]] = {}
        for p, s in zip(problems, scores):
            fam.setdefault(p.skill, []).append(s)
        res[mode] = {"pass": sum(scores) / max(1, len(scores)), "solved": sum(scores),
                     "by_skill": {s: sum(x) / len(x) for s, x in sorted(fam.items())},
                     "test_share": sum(x.share for v in per for x in v) / max(1, sum(len(v) for v in per)),
                     "errors": dict(Counter(category(x) for v in per for x in v if not x.full).most_common(12))}
    return res


def solve(model, tok, problems: list[CodeProblem], cfg: CodeEvalConfig, sampled: bool, progress: bool = True,
          desc: str = "code") -> list[list[str]]:
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens,
                           batch_size=max(1, cfg.batch_size // (cfg.samples if sampled else 1)),
                           temperature=cfg.temperature if sampled else 0.0, top_p=cfg.top_p if sampled else 1.0,
                           num_samples=cfg.samples if sampled else 1, seed=cfg.seed)
    return generate(model, tok, [p.chat for p in problems], gen, progress=progress, desc=desc)


def evaluate_code(model, tok, problems: list[CodeProblem], cfg: CodeEvalConfig = CodeEvalConfig(),
                  progress: bool = True, keep_replies: int = 8, sample_problems: list[CodeProblem] | None = None) -> dict:
    """Greedy pass@1 on ``problems`` (strict and repaired); with ``cfg.samples``, pass@k on
    ``sample_problems`` (default: the same problems). ``keep_replies`` greedy replies are returned as examples."""
    greedy = solve(model, tok, problems, cfg, sampled=False, progress=progress, desc="greedy")
    out = {"pass@1": summarize(problems, verdicts(problems, greedy, cfg)),
           "examples": [{"skill": p.skill, "reply": r[0]} for p, r in list(zip(problems, greedy))[:keep_replies]]}
    if cfg.samples:
        sp = sample_problems if sample_problems is not None else problems
        sampled = solve(model, tok, sp, cfg, sampled=True, progress=progress, desc=f"sample x{cfg.samples}")
        out[f"pass@{cfg.samples}"] = summarize(sp, verdicts(sp, sampled, cfg), k=cfg.samples)
    return out
