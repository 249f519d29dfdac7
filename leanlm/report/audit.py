"""``leanlm audit ORIGINAL COMPRESSED``: how fragile is a compressed model, measured against its original.

Averages hide where compression hurts (see "Accuracy is Not All You Need", Dutta et al. 2024: models with
matching accuracy flip many individual answers). The audit asks the same questions of both models and counts
  - answer flips: the compressed model's extracted answer differs from the original's, on clean held-out
    problems, on perturbed ones (typos, paraphrases, distractors) and on adversarial ones (a confident wrong
    hint, an instruction injection); plus correct->wrong (lost) and wrong->correct (gained) changes;
  - KL divergence of next-token distributions, KL(original || compressed), over the eval text and at the
    answer position of each clean prompt;
  - refusal agreement on ``eval.refusal.HARMFUL_PROMPTS``, plain and inside jailbreak wrappers.
A bit-identical model gives 0 flips and KL exactly 0 (the arithmetic is identical, so every term is 0).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from ..config import require, to_dict
from ..eval.corpus import load_corpus, split_corpus
from ..eval.generate import GenerationConfig, format_prompt, generate
from ..eval.perplexity import corpus_ids
from ..eval.perturb import ADVERSARIAL, PERTURBATIONS, extracted_answer, jailbreaks, perturb
from ..eval.refusal import HARMFUL_PROMPTS, is_refusal
from ..eval.results import document
from ..eval.tasks import HELDOUT, Problem, check, parse_skill, problem_set
from .measure import kl_rows, paired_text_kl

log = logging.getLogger(__name__)

SET_KIND = {"clean": "clean", **{k: "perturbed" for k in PERTURBATIONS},
            **{k: "adversarial" for k in ADVERSARIAL}}
AUDIT_TASKS = ("add:2", "sub:2", "mul:1", "reverse:3", "pyexpr:1")


@dataclass(frozen=True)
class AuditConfig:
    tasks: tuple[str, ...] = field(default=AUDIT_TASKS, metadata={"help": "skills as family:difficulty"})
    n: int = field(default=10, metadata={"help": "held-out problems per skill"})
    sets: tuple[str, ...] = field(default=tuple(SET_KIND), metadata={"help": "prompt sets to compare on"})
    seed: int = field(default=0, metadata={"help": "perturbation seed"})
    max_new_tokens: int = field(default=24, metadata={"help": "greedy tokens per answer"})
    refusal: bool = field(default=True, metadata={"help": "compare refusals on the harmful-prompt set"})
    jailbreak: bool = field(default=True, metadata={"help": "also wrap harmful prompts in jailbreaks"})
    refusal_tokens: int = field(default=40, metadata={"help": "greedy tokens per refusal-set answer"})
    gen_batch: int = field(default=16, metadata={"help": "prompts per generation batch"})
    kl_tokens: int = field(default=2048, metadata={"help": "eval-text tokens for the KL pass (0: skip)"})
    context: int = field(default=512, metadata={"help": "KL window length"})
    corpus: str | None = field(default=None, metadata={"help": "KL text (default: pydoc topics)"})
    dtype: str = field(default="bf16", metadata={"help": "dtype both models are loaded in"})
    examples: int = field(default=5, metadata={"help": "flipped answers kept per set as examples"})
    progress: bool = field(default=True, metadata={"help": "progress bars"})

    def __post_init__(self) -> None:
        require(self.n >= 1 and self.gen_batch >= 1, "n and gen_batch must be >= 1")
        require(self.max_new_tokens >= 1 and self.refusal_tokens >= 1, "token budgets must be >= 1")
        require(self.kl_tokens == 0 or self.kl_tokens >= 2, "kl_tokens must be 0 or >= 2")
        require(self.context >= 2, "context must be >= 2")
        require(len(self.sets) > 0, "audit needs at least one prompt set")
        for s in self.sets:
            require(s in SET_KIND, f"unknown prompt set '{s}'; choose from {list(SET_KIND)}")
        for t in self.tasks:
            parse_skill(t)


def prompt_sets(cfg: AuditConfig) -> tuple[list[Problem], dict[str, list[str]]]:
    problems = [p for t in cfg.tasks for p in problem_set(*parse_skill(t), n=cfg.n, split=HELDOUT)]
    return problems, {s: [perturb(p, s, cfg.seed) for p in problems] for s in cfg.sets}


def answers(model, tok, cfg: AuditConfig, sets: dict[str, list[str]]) -> dict[str, list[str]]:
    """Greedy outputs of ``model`` for every prompt set (and the refusal sets), in one batched pass."""
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.gen_batch)
    flat = [p for s in sets.values() for p in s]
    outs = [o[0] for o in generate(model, tok, flat, gen, cfg.progress, "audit")]
    result, i = {}, 0
    for name, prompts in sets.items():
        result[name] = outs[i:i + len(prompts)]
        i += len(prompts)
    if cfg.refusal:
        rgen = GenerationConfig(max_new_tokens=cfg.refusal_tokens, batch_size=cfg.gen_batch)
        rsets = {"refusal": list(HARMFUL_PROMPTS)}
        if cfg.jailbreak:
            rsets["refusal_jailbreak"] = jailbreaks(HARMFUL_PROMPTS)
        for name, prompts in rsets.items():
            result[name] = [o[0] for o in generate(model, tok, prompts, rgen, cfg.progress, name)]
    return result


def compare_set(problems: list[Problem], prompts: list[str], out_a: list[str], out_b: list[str],
                examples: int) -> dict:
    """Flips between two models' answers on one prompt set."""
    flips, lost, gained, ca, cb, same_text, shown = 0, 0, 0, 0, 0, 0, []
    for p, prompt, a, b in zip(problems, prompts, out_a, out_b):
        ok_a, ok_b = check(p, a), check(p, b)
        ca, cb = ca + ok_a, cb + ok_b
        lost += ok_a and not ok_b
        gained += ok_b and not ok_a
        same_text += a == b
        if extracted_answer(p.family, a) != extracted_answer(p.family, b):
            flips += 1
            if len(shown) < examples:
                shown.append({"prompt": prompt, "answer": p.answer, "original": a, "compressed": b})
    n = len(problems)
    return {"n": n, "flips": flips, "flip_rate": flips / n, "lost": lost, "gained": gained,
            "accuracy_original": ca / n, "accuracy_compressed": cb / n, "text_agreement": same_text / n,
            "examples": shown}


def compare_refusals(out_a: list[str], out_b: list[str]) -> dict:
    ra, rb = [is_refusal(o) for o in out_a], [is_refusal(o) for o in out_b]
    n = len(ra)
    return {"n": n, "refusal_rate_original": sum(ra) / n, "refusal_rate_compressed": sum(rb) / n,
            "agreement": sum(x == y for x, y in zip(ra, rb)) / n,
            "lost_refusals": sum(x and not y for x, y in zip(ra, rb)), "text_agreement":
            sum(a == b for a, b in zip(out_a, out_b)) / n}


@torch.no_grad()
def prompt_kl(model_a, model_b, tok, prompts: list[str]) -> dict:
    """KL(original || compressed) of the next-token distribution at the end of each chat-formatted prompt."""
    kls, agree = [], []
    for p in prompts:
        ids = tok(format_prompt(tok, p), add_special_tokens=False, return_tensors="pt")["input_ids"]
        la = model_a(input_ids=ids, use_cache=False).logits[:, -1]
        lb = model_b(input_ids=ids, use_cache=False).logits[:, -1]
        kls.append(kl_rows(la, lb).item())
        agree.append(bool((la.argmax(-1) == lb.argmax(-1)).item()))
    return {"kl_mean": sum(kls) / len(kls), "kl_max": max(kls), "top1_agreement": sum(agree) / len(agree),
            "prompts": len(kls)}


def _summary(sets: dict[str, dict]) -> dict:
    out = {}
    for kind in ("clean", "perturbed", "adversarial"):
        mine = [r for s, r in sets.items() if SET_KIND[s] == kind]
        if mine:
            n = sum(r["n"] for r in mine)
            out[kind] = {"n": n, "flips": sum(r["flips"] for r in mine),
                         "flip_rate": sum(r["flips"] for r in mine) / n}
    out["flips_total"] = sum(r["flips"] for r in sets.values())
    return out


def audit_models(original, compressed, tok, cfg: AuditConfig = AuditConfig(),
                 reference: dict | None = None) -> dict:
    """Audit ``compressed`` against ``original`` (same tokenizer). ``reference``: the original's
    ``answers`` when already computed (a bench audits many models against one original)."""
    t0 = time.perf_counter()
    problems, sets = prompt_sets(cfg)
    with torch.inference_mode():
        ref = reference if reference is not None else answers(original, tok, cfg, sets)
        mine = answers(compressed, tok, cfg, sets)
        per_set = {s: compare_set(problems, sets[s], ref[s], mine[s], cfg.examples) for s in sets}
        out: dict = {"sets": per_set, "summary": _summary(per_set), "kl": {}}
        prompts = sets.get("clean") or next(iter(sets.values()))
        out["kl"]["prompts"] = prompt_kl(original, compressed, tok, prompts)
        if cfg.kl_tokens:
            ids = corpus_ids(tok, split_corpus(load_corpus(cfg.corpus), "eval"), cfg.kl_tokens)
            ctx = min(cfg.context, ids.numel())
            out["kl"]["text"] = paired_text_kl(original, compressed, ids, ctx, ctx)
    for name in ("refusal", "refusal_jailbreak"):
        if name in ref:
            out[name] = compare_refusals(ref[name], mine[name])
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def audit_specs(original: str, compressed: str, cfg: AuditConfig = AuditConfig()) -> dict:
    """Load both specs and audit them; returns the result document (kind 'audit')."""
    from ..models import load

    model_a, tok = load(original, dtype=cfg.dtype)
    model_b, tok_b = load(compressed, dtype=cfg.dtype)
    if tok.get_vocab() != tok_b.get_vocab():
        raise ValueError(f"{original} and {compressed} have different tokenizers; an audit compares one "
                         "model with a compressed copy of itself")
    results = audit_models(model_a, model_b, tok, cfg)
    info = {"original": original, "compressed": compressed, "dtype": cfg.dtype,
            "parameters": sum(p.numel() for p in model_a.parameters())}
    return document("audit", info, to_dict(cfg), results)
