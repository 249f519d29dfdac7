"""The code recipe, top to bottom (``leanlm evolve smollm2-135m --recipe code``).

One generation = plan -> generate -> solve -> verify -> adversarial round -> propose -> train -> gate ->
checkpoint, from the parent's saved model, seeded by (seed, generation) so a resumed run repeats it:

1. **plan**: the curriculum draws ``(1 - adversarial) * problems`` fresh problems over the active code skills
   (weight p (1 - p) from the last solve rates; a skill solved at >= 0.8 opens its next level);
2. **solve + verify**: k sampled replies each, run against all tests in the sandbox;
3. **adversarial round**: problems made from this round's failures (the missed hidden inputs shown as the
   examples, or a near variant), solved and verified the same way;
4. **propose**: the model writes new problems; valid ones (own tests pass, nothing shared with HumanEval)
   are solved, and a proposal whose solve rate is in (0, 1) trains both roles (reward 1 - solve rate);
5. **train**: LoRA on full passes of learnable problems (solve rate in [0.2, 0.8]) + replay, next to the
   corpus retention loss with PCGrad (the chat recipe's trainer);
6. **gate**: held-out code problems (repaired pass@1 is the score; strict is recorded beside it), the
   held-out families (transfer), arithmetic retention, perplexity, refusals; accept or roll back.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..eval import codetasks
from ..eval.codeeval import CodeEvalConfig, replies, summarize, verdicts
from ..eval.generate import format_prompt
from ..eval.sandbox import run_many
from ..models import load
from . import code, controller, generator, lineage
from .gate import accuracy_by_skill, corpus_perplexity, decide, refusal_metrics, refusals
from .solve import greedy
from .train import Example, add_lora, train

ARITH_N = 24          # held-out problems per arithmetic retention skill
STRIDE = 100_000      # generation g draws training indices from [g * STRIDE, (g + 1) * STRIDE)


def gate_skills(cfg) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(trained skills the score averages, held-out-family skills at the same levels)."""
    levels = sorted({codetasks.parse_code_skill(s)[1] for s in cfg.skills})
    return tuple(cfg.skills), codetasks.all_skills(codetasks.HELDOUT_FAMILIES, tuple(levels))


def _mean(d: dict, keys) -> float | None:
    vals = [d[k] for k in keys if k in d]
    return sum(vals) / len(vals) if vals else None


def measure_code(model, tok, cfg, refused_at_gen0: list[int]) -> dict:
    trained, transfer = gate_skills(cfg)
    problems = codetasks.heldout_set(trained + transfer, cfg.heldout_n)
    ecfg = CodeEvalConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.gen_batch)
    out = replies(model, tok, [p.chat for p in problems], cfg.max_new_tokens, batch_size=cfg.gen_batch,
                  progress=cfg.progress, desc="heldout code")
    res = summarize(problems, verdicts(problems, out, ecfg))
    rep, strict = res["repaired"]["by_skill"], res["strict"]["by_skill"]
    arith = generator.heldout_set(tuple(cfg.retention_skills), ARITH_N)
    aouts = greedy(model, tok, [p.prompt for p in arith], 32, batch_size=cfg.gen_batch, progress=cfg.progress,
                   desc="retention")
    acc = accuracy_by_skill(arith, aouts)
    refused = refusals(model, tok, progress=cfg.progress)
    return {"heldout": rep, "heldout_strict": strict, "score": _mean(rep, trained),
            "score_strict": _mean(strict, trained), "headline": _mean(rep, trained),
            "transfer": _mean(rep, transfer), "transfer_strict": _mean(strict, transfer),
            "errors": res["repaired"]["errors"], "errors_strict": res["strict"]["errors"],
            "test_share": res["repaired"]["test_share"], "retention_heldout": acc,
            "retention": _mean(acc, cfg.retention_skills),
            "ppl": corpus_perplexity(model, tok, cfg.ppl_tokens, progress=cfg.progress),
            **refusal_metrics(refused, refused_at_gen0),
            "examples": [{"skill": p.skill, "reply": o[0]} for p, o in list(zip(problems, out))[:4]]}


def code_start(cfg, run: Path) -> dict:
    """Generation 0: the model as it comes, measured."""
    model, tok = load(cfg.spec, dtype=cfg.dtype)
    metrics = measure_code(model, tok, cfg, [])
    metrics["refusal_kept"] = None
    rec = {"generation": 0, "parent": None, "accepted": True, "model_source": cfg.spec, "metrics": metrics,
           "skills": list(cfg.skills), "rates": {}, "course": vars(controller.Course()), "probe": None,
           "refused_at_gen0": metrics["refused"], "decisions": ["generation 0: the model as loaded"]}
    lineage.save_generation(run, rec, [], [])
    return rec


def solve_and_verify(model, tok, cfg, problems, k: int, seed: int):
    samples = replies(model, tok, [p.chat for p in problems], cfg.max_new_tokens, k, cfg.temperature, 0.95, seed,
                      batch_size=cfg.gen_batch, progress=cfg.progress, desc="solve") if problems else []
    return samples, code.verify(problems, samples)


def propose(model, tok, cfg, k: int, seed: int) -> tuple[list, list, list, list[Example], dict]:
    """Proposals -> valid problems -> solved; returns (problems, samples, verdicts, proposer examples, stats)."""
    from ..eval import humaneval

    prompts = [code.PROPOSE_PROMPT.format(topic=code.TOPICS[i % len(code.TOPICS)]) for i in range(cfg.propose)]
    texts = replies(model, tok, prompts, cfg.max_new_tokens, 1, 1.0, 0.95, seed + 7, batch_size=cfg.gen_batch,
                    progress=cfg.progress, desc="propose")
    parsed = [(i, q) for i, t in enumerate(texts) if (q := code.parse_proposal(t[0], i)) is not None]
    own = run_many([(q.reference, list(q.tests)) for _, q in parsed])     # its own function must pass its tests
    valid = [(i, q) for (i, q), v in zip(parsed, own) if v.full]
    try:
        shared = humaneval.overlap([q for _, q in valid]) if valid else {"names": [], "lines": []}
        valid = [(i, q) for i, q in valid if q.fn not in shared["names"]
                 and not humaneval.docstring_lines(q.prompt, q.fn) & set(shared["lines"])]
    except ImportError:
        pass                                    # without HumanEval installed there is nothing to compare to
    samples, vs = solve_and_verify(model, tok, cfg, [q for _, q in valid], k, seed + 11)
    ex, rewards = [], []
    for (i, q), v in zip(valid, vs):
        r = code.proposer_reward(code.solve_rate(v))
        rewards.append(r)
        if r > 0:
            ex.append(Example(format_prompt(tok, prompts[i]), code.repair(texts[i][0], q.fn).strip("\n")))
    stats = {"asked": len(prompts), "parsed": len(parsed), "valid": len(valid), "rewarded": len(ex),
             "mean_reward": sum(rewards) / len(rewards) if rewards else None}
    return [q for _, q in valid], samples, vs, ex, stats


def code_generation(g: int, cfg, run: Path, recs: list[dict]) -> dict:
    from .loop import Laps, corpus_examples, gen_seed, replay, summarize as train_summary, train_config

    parent, base, last = lineage.latest_accepted(recs), recs[0], recs[-1]
    seed, lap = gen_seed(cfg, g), Laps()
    torch.manual_seed(seed)
    model, tok = load(lineage.model_path(run, parent), dtype=cfg.dtype)
    course = controller.Course(**last["course"])
    k = max(2, round(cfg.samples * course.samples_scale))
    lap("load")

    # 1-2. Plan and generate fresh problems (train seed space, none sharing a prompt with the gate's).
    n_adv = round(cfg.problems * cfg.adversarial)
    skills, counts, notes = code.plan_skills(tuple(last["skills"]), last.get("rates", {}), cfg.problems - n_adv, seed)
    heldout = codetasks.heldout_set(sum(gate_skills(cfg), ()), cfg.heldout_n)
    fresh = codetasks.disjoint([p for s, n in counts.items() for p in codetasks.problem_set(
        *codetasks.parse_code_skill(s), n, split=codetasks.TRAIN, start=g * STRIDE)], heldout)
    lap("generate")

    # 3. Solve + verify; 4. the adversarial round from this round's failures.
    samples, vs = solve_and_verify(model, tok, cfg, fresh, k, seed)
    adv = codetasks.disjoint(code.adversarial(fresh, vs, n_adv, seed), heldout)
    adv_samples, adv_vs = solve_and_verify(model, tok, cfg, adv, k, seed + 3)
    lap("solve")

    # 5. Proposer: new problems the model writes and the solver finds neither trivial nor impossible.
    prop, prop_samples, prop_vs, prop_ex, prop_stats = propose(model, tok, cfg, k, seed) if cfg.propose else (
        [], [], [], [], None)
    lap("propose")

    # 6. Data: full passes of learnable problems only.
    problems, all_samples, all_vs = fresh + adv + prop, samples + adv_samples + prop_samples, vs + adv_vs + prop_vs
    chat_prompts = [format_prompt(tok, p.chat) for p in problems]
    sft = code.training_examples(chat_prompts, problems, all_samples, all_vs) + prop_ex
    rates = {**last.get("rates", {}), **code.skill_rates(fresh + adv, vs + adv_vs)}
    new = sft + replay(run, recs, cfg.replay, seed)
    tcfg = train_config(cfg, course, seed)
    hist, adapter_tmp = {"loss_new": []}, None
    if new and cfg.steps:
        retention = corpus_examples(tok, seed, seq_len=cfg.retention_len, corpora=cfg.retention_corpus)
        model = add_lora(model, tcfg) if cfg.lora_r else model
        hist = train(model, tok, new, retention, tcfg, progress=cfg.progress)
        if cfg.lora_r:
            adapter_tmp = tempfile.TemporaryDirectory(dir=run, prefix=".adapter-")
            model.save_pretrained(adapter_tmp.name)
            model = model.merge_and_unload()
    lap("train")

    # 7. Gate.
    metrics = measure_code(model, tok, cfg, base["refused_at_gen0"])
    lap("gate")
    accept, reasons = decide(metrics, parent["metrics"], base["metrics"], cfg.ppl_tolerance, cfg.refusal_tolerance,
                             cfg.retention_tolerance)
    if not new:
        accept, reasons = False, reasons + ["FAIL: no fully passing sample of a learnable problem to train on"]
    course, why = (controller.after_accept if accept else controller.after_rollback)(course)

    # 8. Checkpoint.
    flat = [code.solve_rate(v) for v in all_vs]
    rec = {"generation": g, "parent": parent["generation"], "accepted": accept, "metrics": metrics, "probe": rates,
           "skills": list(skills if accept else last["skills"]), "rates": rates, "course": vars(course),
           "plan": {"problems": counts, "samples": k, "adversarial": n_adv},
           "data": {"problems": len(problems), "fresh": len(fresh), "adversarial": len(adv), "proposed": len(prop),
                    "learnable": sum(code.learnable(r) for r in flat), "solved_all": sum(r == 1.0 for r in flat),
                    "solved_none": sum(r == 0.0 for r in flat), "sft": len(sft), "proposer_sft": len(prop_ex),
                    "replay": len(new) - len(sft),
                    "sample_pass": sum(v.full for vs_ in all_vs for v in vs_) / max(1, sum(map(len, all_vs))),
                    "sample_test_share": sum(code.reward(v) for vs_ in all_vs for v in vs_) / max(1, sum(map(len, all_vs)))},
           "proposer": prop_stats, "train": train_summary(hist), "decisions": [*notes, *reasons, why],
           "seconds": lap.seconds}
    lineage.save_generation(run, rec, sft, [], model if accept else None, tok,
                            Path(adapter_tmp.name) if (accept and adapter_tmp) else None)
    if adapter_tmp:
        adapter_tmp.cleanup()
    return rec
