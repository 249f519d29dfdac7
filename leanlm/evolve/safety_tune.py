"""Safety tuning before self-evolution (``leanlm evolve SPEC --safety-tune``): generation 0 learns to
refuse harmful requests and to keep answering benign ones, so the gate has a refusal behaviour to protect.

Data, all from train parts (``leanlm.eval.safety``): our written refusals to ``safety_refusals`` harmful
prompts; the untuned model's *own* greedy answers (self-distillation: helpfulness without new knowledge) to
the over-refusal prompts and to a few task problems of every skill, cut at their last sentence end and
kept only when the detector does not call them refusals. LoRA trains on the mix next to the corpus
retention loss with PCGrad, in rounds of ``safety_steps``; after each round the held-out refusal and
over-refusal rates are measured, and tuning stops when refusal >= ``refusal_target`` and over-refusal <=
``over_refusal_target`` (or after ``safety_rounds``). The adapter is merged into the weights.
"""
from __future__ import annotations

import dataclasses
import logging
import re

from ..eval import safety as sets
from ..eval.generate import format_prompt
from ..eval.refusal import is_refusal
from ..eval.tasks import parse_skill, problem_set
from . import safety
from .solve import greedy
from .train import Example, TrainConfig, add_lora, train

log = logging.getLogger(__name__)
HELPFUL_TOKENS = 64
_END = re.compile(r"[.!?\n](?=[^.!?\n]*$)")


def cut_at_sentence(text: str) -> str:
    """``text`` up to its last sentence end (a reply cut by the token budget loses its partial sentence)."""
    m = _END.search(text)
    return text[:m.end()].strip() if m and m.end() > 20 else text.strip()


def benign_prompts(cfg) -> list[str]:
    tasks = [p.prompt for s in dict.fromkeys((*cfg.skills, *cfg.retention_skills))
             for p in problem_set(*parse_skill(s), n=8, split="safety-benign")]
    return sets.over_refusal_prompts(sets.TRAIN) + tasks


def build_data(model, tok, cfg) -> tuple[list[Example], dict]:
    harmful = sets.spaced(sets.harmful_prompts(sets.TRAIN), cfg.safety_refusals)
    refusals = safety.refusal_examples(tok, harmful)
    prompts = benign_prompts(cfg)
    outs = greedy(model, tok, prompts, HELPFUL_TOKENS, batch_size=cfg.gen_batch, progress=cfg.progress,
                  desc="helpful")
    helpful = [Example(format_prompt(tok, p), cut_at_sentence(o)) for p, o in zip(prompts, outs)
               if o.strip() and not is_refusal(o)]
    # helpful answers repeated to about as many as the refusals, so refusing is not the easy way out
    reps = max(1, round(len(refusals) / max(1, len(helpful))))
    return refusals + helpful * reps, {"refusals": len(refusals), "helpful": len(helpful), "helpful_repeats": reps,
                                       "benign_prompts": len(prompts)}


def tune(model, tok, cfg, retention: list[Example], seed: int):
    """Safety-tune ``model`` (LoRA, merged at the end). Returns (model, training examples, record)."""
    data, counts = build_data(model, tok, cfg)
    tcfg = TrainConfig(steps=cfg.safety_steps, batch_size=cfg.batch_size, lr=cfg.safety_lr,
                       warmup=max(1, cfg.safety_steps // 10), surgery=cfg.surgery,
                       retention_weight=cfg.retention_weight, retention_kl=cfg.retention_kl, lora_r=cfg.lora_r,
                       seed=seed,
                       micro_batches=cfg.micro_batches)
    model = add_lora(model, tcfg) if cfg.lora_r else model
    rounds = []
    for r in range(cfg.safety_rounds):
        hist = train(model, tok, data, retention, dataclasses.replace(tcfg, seed=seed + r), progress=cfg.progress,
                     desc=f"safety {r + 1}")
        m = safety.measure(model, tok, cfg.refusal_n, cfg.refusal_relevance, cfg.gen_batch, cfg.progress)
        rounds.append({"round": r + 1, "steps": (r + 1) * cfg.safety_steps, "loss_first": hist["loss_new"][0],
                       "loss_last": hist["loss_new"][-1], "refusal_heldout": m["refusal_heldout"],
                       "over_refusal": m["over_refusal"]})
        log.info("safety round %d: refusal %.3f, over-refusal %.3f", r + 1, m["refusal_heldout"], m["over_refusal"])
        if m["refusal_heldout"] >= cfg.refusal_target and m["over_refusal"] <= cfg.over_refusal_target:
            break
    met = bool(rounds) and rounds[-1]["refusal_heldout"] >= cfg.refusal_target and \
        rounds[-1]["over_refusal"] <= cfg.over_refusal_target
    return model.merge_and_unload() if cfg.lora_r else model, data, {**counts, "rounds": rounds, "targets_met": met,
                                            "stopping": "held-out refusal and over-refusal after each round"}
