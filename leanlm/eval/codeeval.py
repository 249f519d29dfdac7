"""Evaluate a model on code problems: replies through the chat template, programs run in the sandbox,
pass@1 (greedy) and pass@k (sampled) under strict and repaired scoring, and what went wrong.

pass@k uses the unbiased estimator of Chen et al. 2021 (HumanEval): with n samples of which c pass,
1 - C(n - c, k) / C(n, k); with n = k it is the share of problems with at least one passing sample.
Replies end where the code does (``CodeStop``): at the closing fence of the first code block, or, in a
reply without a fence, at a new top-level ``def`` / ``class`` / ``if`` / ``print`` (HumanEval's stop
sequences); without this a small chat model spends most of its token budget explaining its code.
Error categories are the sandbox status, refined by the exception type (``error:SyntaxError``,
``error:NameError``, ``fail`` for a wrong answer, ``timeout`` ...), counted per scoring mode.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from .codetasks import CodeProblem, program
from .generate import format_prompt
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


class CodeStop(StoppingCriteria):
    """Per row: stop once the new text holds a complete fenced block, or a top-level stop sequence when no
    fence was opened (see the module docstring)."""
    STOPS = ("\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "<|im_end|>")

    def __init__(self, tok, prompt_len: int):
        self.tok, self.start = tok, prompt_len

    @staticmethod
    def done(text: str) -> bool:
        first = text.find("```")
        if first >= 0:
            return text.find("```", first + 3) >= 0
        return len(text) > 8 and any(s in text[1:] for s in CodeStop.STOPS)

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tok.batch_decode(input_ids[:, self.start:], skip_special_tokens=True)
        return torch.tensor([self.done(t) for t in texts], dtype=torch.bool, device=input_ids.device)


def cut(text: str) -> str:
    """The reply up to where ``CodeStop`` stopped it (the tokens of the last step can run past it)."""
    first = text.find("```")
    if first >= 0:
        second = text.find("```", first + 3)
        return text if second < 0 else text[:second + 3]
    hits = [i for i in (text.find(s, 1) for s in CodeStop.STOPS) if i > 0]
    return text[:min(hits)] if hits and len(text) > 8 else text


@torch.no_grad()
def replies(model, tok, prompts: list[str], max_new_tokens: int, k: int = 1, temperature: float = 0.0,
            top_p: float = 1.0, seed: int = 0, batch_size: int = 8, progress: bool = True,
            desc: str = "code") -> list[list[str]]:
    """``k`` replies per chat prompt (greedy when ``temperature`` is 0), each cut where its code ends."""
    texts = [format_prompt(tok, p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[list[str]] = [[] for _ in prompts]
    gen = torch.Generator().manual_seed(seed)
    per = max(1, batch_size // k)
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress, leave=False)
    for i in range(0, len(order), per):
        idx = order[i:i + per]
        enc = tok([texts[j] for j in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        kw = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                  num_return_sequences=k, stopping_criteria=StoppingCriteriaList([CodeStop(tok, enc["input_ids"].shape[1])]))
        if temperature > 0:
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        seqs = model.generate(**enc, **kw)
        decoded = tok.batch_decode(seqs[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for r, j in enumerate(idx):
            out[j] = [cut(t) for t in decoded[r * k:(r + 1) * k]]
        bar.update(len(idx))
    bar.close()
    return out


def solve(model, tok, problems: list[CodeProblem], cfg: CodeEvalConfig, sampled: bool, progress: bool = True,
          desc: str = "code") -> list[list[str]]:
    if sampled:
        return replies(model, tok, [p.chat for p in problems], cfg.max_new_tokens, cfg.samples, cfg.temperature,
                       cfg.top_p, cfg.seed, cfg.batch_size, progress, desc)
    return replies(model, tok, [p.chat for p in problems], cfg.max_new_tokens, batch_size=cfg.batch_size,
                   progress=progress, desc=desc)


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
