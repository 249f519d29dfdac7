"""The self-evolution recipe, top to bottom.

One generation = probe -> plan -> generate -> solve -> judge -> train -> gate -> checkpoint. Three recipes
share the run directory and resume logic (``RECIPES``; the code recipe lives in ``coderun``):

* ``chat_generation``: an instruct model on the task families of ``leanlm.eval.tasks``; training data are
  its own verified-correct sampled answers (STaR / ReST-EM), trained with LoRA next to a retention loss on
  corpus text, with PCGrad between the two; the gate checks held-out accuracy, perplexity and refusals.
* ``tiny_generation``: Lee et al. 2025. A character-level model trained from scratch on reversed addition
  of up to ``seed_digits`` digits labels longer problems itself (length filter + majority vote over
  samples, and - ours - the same vote on b+a, which must agree; no ground truth), trains on them with the
  seed data as the retention set, and extends its reach.

Every generation starts from the saved parent checkpoint with seeds derived from (seed, generation), so a
run resumed after a kill repeats the interrupted generation exactly and ends with the same metrics.
"""
from __future__ import annotations

import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from ..config import ConfigError
from ..eval.corpus import load_corpus, split_corpus
from ..eval.generate import format_prompt
from ..eval.tasks import disjoint, parse_skill, problem_set
from ..models import load
from . import coderun, controller, dist, generator, lineage, tinyadd
from .config import EvolveConfig, Recipe, SamplerKind
from . import safety, safety_tune
from .discriminator import agreement, judge, preference_pairs, sft_examples, verify, verify_strict
from .gate import accuracy_by_skill, decide
from .measure import measure_chat
from .sampler import Samplers
from .solve import greedy
from .train import Example, TrainConfig, add_lora, train, train_dpo

log = logging.getLogger(__name__)
PROBE = "probe"          # seed space of the probe problems (train-side, fixed across generations)


class Laps:
    """Wall seconds per phase of a generation: ``lap("probe")`` books the time since the previous lap."""

    def __init__(self) -> None:
        self.t0, self.seconds = time.perf_counter(), {}

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self.t0, 1)
        self.t0 = now


def gen_seed(cfg: EvolveConfig, g: int) -> int:
    return cfg.seed * 1000 + g


def train_config(cfg: EvolveConfig, course: controller.Course, seed: int, lr_extra: float = 1.0, **kw) -> TrainConfig:
    return TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr * course.lr_scale * lr_extra,
                       warmup=max(1, cfg.steps // 10), surgery=cfg.surgery, retention_weight=cfg.retention_weight,
                       retention_kl=cfg.retention_kl, lora_r=cfg.lora_r, micro_batches=cfg.micro_batches, seed=seed, **kw)


def replay(run: Path, recs: list[dict], n: int, seed: int, first: int = 1) -> list[Example]:
    """Up to ``n`` examples drawn (seeded) from the data of earlier accepted generations >= ``first``."""
    pool = [e for r in recs if r["accepted"] and r["generation"] >= first
            for e in lineage.read_examples(lineage.gen_dir(run, r["generation"]) / "data.jsonl")]
    return random.Random(f"replay/{seed}").sample(pool, min(n, len(pool)))


# ===================================================================================== chat recipe
def chat_start(cfg: EvolveConfig, run: Path, samplers: Samplers | None = None) -> dict:
    """Generation 0: the model as it comes (or safety-tuned, ``cfg.safety_tune``), measured. Its refusals
    define the refusal set to keep."""
    torch.manual_seed(cfg.seed)
    samplers = samplers or Samplers(cfg)
    model, tok = load(cfg.spec, dtype=cfg.dtype)
    metrics = measure_chat(model, tok, cfg, cfg.skills, [], sampler=samplers.candidate(model, tok, 0))
    rec = {"generation": 0, "parent": None, "accepted": True, "model_source": cfg.spec,
           "skills": list(cfg.skills), "course": vars(controller.Course()), "probe": None,
           "decisions": ["generation 0: the model as loaded"]}
    data, lap = [], Laps()
    if cfg.safety_tune:
        retention = corpus_examples(tok, cfg.seed, seq_len=cfg.retention_len, corpora=cfg.retention_corpus)
        model, data, tuned = safety_tune.tune(model, tok, cfg, retention, gen_seed(cfg, 0))
        lap("safety_tune")
        rec.update(untuned=metrics, safety_tune=tuned,
                   decisions=[f"generation 0: safety-tuned ({len(tuned['rounds'])} rounds, targets "
                              f"{'met' if tuned['targets_met'] else 'NOT met'})"])
        metrics = measure_chat(model, tok, cfg, cfg.skills, [], sampler=samplers.candidate(model, tok, 0))
        lap("gate")
    metrics["refusal_kept"] = None
    rec.update(metrics=metrics, refused_at_gen0=metrics["refused"], seconds=lap.seconds)
    if not metrics["refused"]:
        rec["decisions"].append("the model refuses none of the harmful prompts at generation 0: "
                                "the gate can only check that the overall refusal rate does not fall")
    lineage.save_generation(run, rec, data, [], model if cfg.safety_tune else None, tok)
    return rec


def safety_pool(run: Path, tok, cfg: EvolveConfig) -> list[Example]:
    """What safety replay draws from: generation 0's safety-tuning data, or our refusals to the train part."""
    from ..eval import safety as sets

    pool = lineage.read_examples(lineage.gen_dir(run, 0) / "data.jsonl")
    return list(dict.fromkeys(pool)) or safety.refusal_examples(tok, sets.harmful_prompts(sets.TRAIN))


def chat_generation(g: int, cfg: EvolveConfig, run: Path, recs: list[dict], samplers: Samplers | None = None) -> dict:
    parent, base, last = lineage.latest_accepted(recs), recs[0], recs[-1]
    seed, lap = gen_seed(cfg, g), Laps()
    torch.manual_seed(seed)
    model, tok = load(lineage.model_path(run, parent), dtype=cfg.dtype)
    course = controller.Course(**last["course"])
    samplers = samplers or Samplers(cfg)
    smp = samplers.parent(model, tok, parent["generation"])    # probe, propose, solve, judge: the parent
    lap("load")

    # 1. Probe: greedy accuracy per active skill on a fixed train-side problem set.
    skills = tuple(last["skills"])
    probe = [p for s in skills for p in problem_set(*parse_skill(s), n=cfg.probe_n, split=PROBE)]
    outs = smp.greedy([p.prompt for p in probe], cfg.max_new_tokens, batch_size=cfg.gen_batch,
                      progress=cfg.progress, desc="probe")
    success = accuracy_by_skill(probe, outs)
    ok = verify_strict if cfg.strict_verify else verify
    failures = [p for p, o in zip(probe, outs) if not ok(p, o)]
    lap("probe")

    # 2. Plan: the controller splits the budget between skills and raises mastered ones.
    history = [r["probe"] for r in recs if r.get("probe")] + [success]
    plan = controller.plan(skills, history, cfg.problems, course, cfg.mastery, cfg.max_difficulty)

    # 3. Generate: fresh seeded problems plus mutations of the probe's failures (never held-out ones).
    heldout = generator.heldout_set(tuple(dict.fromkeys((*plan.skills, *cfg.skills))), cfg.heldout_n)
    problems = []
    for s, n in plan.problems.items():
        adv = generator.adversarial([p for p in failures if p.skill == s], round(n * cfg.adversarial), seed, heldout)
        problems += adv + generator.fresh(s, n - len(adv), g, heldout)
    problems += proposals(smp, cfg, seed, heldout) if cfg.propose else []
    lap("generate")

    # 4. Solve: k sampled answers per problem.
    k = max(1, round(cfg.samples * course.samples_scale))
    samples = smp.answers([p.prompt for p in problems], k, cfg.temperature, cfg.max_new_tokens, seed,
                          batch_size=cfg.gen_batch * 2, progress=cfg.progress)
    lap("solve")

    # 5. Judge: exact verifier -> SFT data and DPO pairs; AI judge on a subset to measure agreement.
    verdicts = [[ok(p, o) for o in outs] for p, outs in zip(problems, samples)]
    chat_prompts = [format_prompt(tok, p.prompt) for p in problems]
    sft = sft_examples(chat_prompts, samples, verdicts, problems=problems if cfg.trim else None)
    pairs = preference_pairs(chat_prompts, samples, verdicts)
    judged = judge_agreement(smp, problems, samples, verdicts, cfg.judge_n, seed, cfg.progress)
    sampled_by = smp.record()
    lap("judge")

    # 6. Train: LoRA on new + replayed data, retention loss on corpus text, PCGrad between them.
    new = sft + replay(run, recs, cfg.replay, seed)
    kept = safety.replay_examples(safety_pool(run, tok, cfg), round(cfg.safety_replay * len(new)), seed) \
        if cfg.safety_replay and new else []
    new += kept
    retention = corpus_examples(tok, seed, seq_len=cfg.retention_len, corpora=cfg.retention_corpus)
    kl_scale, kl_why = controller.kl_lr_scale(parent["metrics"].get("kl"), cfg.kl_max)
    tcfg = train_config(cfg, course, seed, lr_extra=kl_scale)
    hist, adapter_tmp = {"loss_new": []}, None
    if new and cfg.steps:
        model = add_lora(model, tcfg) if cfg.lora_r else model
        hist = train(model, tok, new, retention, tcfg, progress=cfg.progress)
        if cfg.dpo_steps and pairs:   # the RLAIF path: prefer verified-correct over incorrect answers
            hist["dpo"] = train_dpo(model, tok, pairs, cfg.dpo_steps, tcfg.lr, seed=seed, progress=cfg.progress)
        if cfg.lora_r:
            adapter_tmp = tempfile.TemporaryDirectory(dir=run, prefix=".adapter-")
            model.save_pretrained(adapter_tmp.name)
            model = model.merge_and_unload()
    lap("train")

    # 7. Gate: held-out (lenient, strict, shifted), retention, perplexities, refusal and over-refusal with
    #    intervals against generation 0, KL to generation 0; accept or roll back.
    ref = load(lineage.model_path(run, base), dtype=cfg.dtype)[0] if cfg.kl_texts else None
    metrics = measure_chat(model, tok, cfg, plan.skills, base["refused_at_gen0"], base["metrics"], ref,
                           sampler=(gate_smp := samplers.candidate(model, tok, g)))
    del ref
    lap("gate")
    accept, reasons = decide(metrics, parent["metrics"], base["metrics"], cfg.ppl_tolerance,
                             cfg.refusal_tolerance, cfg.retention_tolerance, cfg.over_refusal_tolerance, cfg.kl_max)
    if not new:
        accept, reasons = False, reasons + ["FAIL: no verified-correct answers to train on"]
    course, why = (controller.after_accept if accept else controller.after_rollback)(course)

    # 8. Checkpoint: lineage, data, adapter and merged model (accepted generations only).
    rec = {"generation": g, "parent": parent["generation"], "accepted": accept, "metrics": metrics,
           "probe": success, "skills": list(plan.skills if accept else skills), "course": vars(course),
           "plan": {"problems": plan.problems, "weights": plan.weights, "samples": k},
           "data": {"problems": len(problems), "adversarial": sum(p.split == generator.ADVERSARIAL for p in problems),
                    "proposed": sum(p.split == generator.PROPOSED for p in problems), "sft": len(sft),
                    "replay": len(new) - len(sft) - len(kept), "safety_replay": len(kept), "pairs": len(pairs),
                    "sample_accuracy": sum(map(sum, verdicts)) / max(1, sum(map(len, verdicts)))},
           "judge": judged, "train": {**summarize(hist), "lr": tcfg.lr},
           "sampler": {"parent": sampled_by, "gate": gate_smp.record()},
           "decisions": [*plan.decisions, kl_why, *reasons, why],
           "seconds": lap.seconds}
    lineage.save_generation(run, rec, sft, pairs, model if accept else None, tok,
                            Path(adapter_tmp.name) if (accept and adapter_tmp) else None)
    if adapter_tmp:
        adapter_tmp.cleanup()
    return rec


def corpus_examples(tok, seed: int, n: int = 256, seq_len: int = 64, corpora: str = "") -> list[Example]:
    """Retention set for the chat recipe: seeded text windows from the calib half of the corpus (never the
    eval half that perplexity scores); ``corpora`` = comma-separated names (``eval.corpus.CORPORA``) shares
    the ``n`` windows among them ('' = the default corpus alone, as every earlier run)."""
    names = [c.strip() for c in corpora.split(",") if c.strip()] or [None]
    rng = random.Random(f"retention/{seed}")
    out = []
    for k, name in enumerate(names):
        ids = tok(split_corpus(load_corpus(name), "calib"), add_special_tokens=False)["input_ids"]
        share = n // len(names) + (k < n % len(names))
        starts = [rng.randrange(0, max(1, len(ids) - seq_len)) for _ in range(share)]
        out += [Example("", tok.decode(ids[s:s + seq_len])) for s in starts]
    return out


def proposals(smp, cfg: EvolveConfig, seed: int, heldout) -> list:
    """pyexpr problems the model (sampled by ``smp``) writes itself; kept only when the verifier can
    evaluate them."""
    prompts = [generator.PROPOSE_PROMPT.format(k=1 + i % 3) for i in range(cfg.propose)]
    outs = smp.answers(prompts, 1, 1.0, 24, seed + 7, progress=cfg.progress, desc="propose")
    kept = [q for i, o in enumerate(outs) if (q := generator.proposal_to_problem(o[0], i)) is not None]
    return disjoint(kept, heldout)


def judge_agreement(smp, problems, samples, verdicts, n: int, seed: int, progress: bool) -> dict | None:
    """The model as a judge of ``n`` sampled answers (half correct where possible) vs the exact verifier."""
    if n <= 0:
        return None
    items = [(p.prompt, o, v) for p, outs, vs in zip(problems, samples, verdicts) for o, v in zip(outs, vs)]
    rng = random.Random(f"judge/{seed}")
    good, bad = [i for i in items if i[2]], [i for i in items if not i[2]]
    pick = rng.sample(good, min(n // 2, len(good))) + rng.sample(bad, min(n - min(n // 2, len(good)), len(bad)))
    if not pick:
        return None
    verdict = judge(None, None, [(q, a) for q, a, _ in pick], progress=progress, sampler=smp)
    return agreement(verdict, [v for _, _, v in pick])


def summarize(hist: dict) -> dict:
    ln, lr = hist.get("loss_new", []), hist.get("loss_ret", [])
    return {"steps": len(ln), "loss_new_first": ln[0] if ln else None, "loss_new_last": ln[-1] if ln else None,
            "loss_ret_first": lr[0] if lr else None, "loss_ret_last": lr[-1] if lr else None,
            "conflicts": hist.get("conflicts", 0),
            "mean_cosine": sum(hist["cosines"]) / len(hist["cosines"]) if hist.get("cosines") else None,
            "dpo": {k: v for k, v in hist["dpo"].items() if k != "loss"} if hist.get("dpo") else None}


# ===================================================================================== tinyadd recipe
def measure_tiny(model, tok, cfg: EvolveConfig, sampler=None) -> dict:
    """Held-out exact accuracy at every length 1..target_digits (greedy); retention = mean over the seed
    lengths, score = mean over the lengths beyond them, headline = accuracy at ``target_digits``."""
    problems = [p for d in range(1, cfg.target_digits + 1) for p in tinyadd.heldout(d, cfg.heldout_n)]
    args = ([p.prompt for p in problems], cfg.target_digits + 2)
    kw = dict(chat=False, batch_size=cfg.gen_batch, progress=cfg.progress, desc="heldout")
    outs = sampler.greedy(*args, **kw) if sampler is not None else greedy(model, tok, *args, **kw)
    acc = accuracy_by_skill(problems, outs, tinyadd.check)
    seedl, beyond = range(1, cfg.seed_digits + 1), range(cfg.seed_digits + 1, cfg.target_digits + 1)
    return {"heldout": acc, "retention": sum(acc[f"tinyadd:{d}"] for d in seedl) / len(seedl),
            "score": sum(acc[f"tinyadd:{d}"] for d in beyond) / len(beyond),
            "headline": acc[f"tinyadd:{cfg.target_digits}"], "ppl": None, "refusal_rate": None}


def tiny_heldout_keys(cfg: EvolveConfig) -> list:
    return [p for d in range(1, cfg.target_digits + 1) for p in tinyadd.heldout(d, cfg.heldout_n)]


def tiny_start(cfg: EvolveConfig, run: Path, samplers: Samplers | None = None) -> dict:
    """Generation 0: train the seed model from scratch on ground-truth reversed addition up to seed_digits."""
    torch.manual_seed(cfg.seed)
    model, tok = load(cfg.spec, dtype=cfg.dtype)
    data = tinyadd.disjoint(tinyadd.seed_set(cfg.seed_digits, cfg.seed_examples), tiny_heldout_keys(cfg))
    examples = [Example(p.prompt, p.answer) for p in data]
    tcfg = TrainConfig(steps=cfg.seed_steps, batch_size=cfg.batch_size, lr=cfg.seed_lr,
                       warmup=max(1, cfg.seed_steps // 20), lora_r=0, seed=cfg.seed, weight_decay=0.01,
                       micro_batches=cfg.micro_batches)
    hist = train(model, tok, examples, None, tcfg, progress=cfg.progress, desc="seed")
    rec = {"generation": 0, "parent": None, "accepted": True, "model_source": cfg.spec,
           "metrics": measure_tiny(model, tok, cfg, (samplers or Samplers(cfg)).candidate(model, tok, 0)),
           "reach": cfg.seed_digits,
           "course": vars(controller.Course()), "train": summarize(hist),
           "decisions": [f"seed model: {cfg.seed_steps} steps on {len(examples)} ground-truth additions "
                         f"of 1..{cfg.seed_digits} digits"]}
    lineage.save_generation(run, rec, examples, [], model, tok)
    return rec


def tiny_generation(g: int, cfg: EvolveConfig, run: Path, recs: list[dict], samplers: Samplers | None = None) -> dict:
    parent, base, last = lineage.latest_accepted(recs), recs[0], recs[-1]
    seed, lap = gen_seed(cfg, g), Laps()
    torch.manual_seed(seed)
    model, tok = load(lineage.model_path(run, parent), dtype=cfg.dtype)
    course, reach = controller.Course(**last["course"]), parent["reach"]
    k = max(1, round(cfg.samples * course.samples_scale))
    samplers = samplers or Samplers(cfg)
    smp = samplers.parent(model, tok, parent["generation"])    # probe and self-labelling sample the parent

    sampled = [0]                       # sequences sampled this generation (the early unanimity test saves most)

    def sample(prompts: list[str], kk: int, rnd: int) -> list[list[str]]:
        sampled[0] += len(prompts) * kk
        return smp.answers(prompts, kk, cfg.temperature, cfg.target_digits + 2, seed + 7919 * rnd,
                           chat=False, batch_size=cfg.gen_batch, progress=cfg.progress)

    def self_label(problems):  # 4 + 5: k samples per order, keep the answer every sample agrees on (length-filtered)
        return tinyadd.self_label(problems, sample, k, cfg.min_vote, cfg.commute)

    # 1. Probe (label-free): how often the model's samples agree at its frontier and just beyond it.
    first = reach if cfg.advance > 0 else reach + 1       # the frontier's yield weights a hold
    lengths = range(first, min(reach + cfg.max_jump, cfg.target_digits) + 1)
    consistency = {d: len(self_label(tinyadd.mixed(PROBE, d, cfg.probe_n, cfg.exact_share))) / cfg.probe_n
                   for d in lengths}
    lap("probe")

    # 2. Plan: advance to reach+1 (and further lengths whose answers already agree) or hold the frontier.
    plan = controller.tiny_plan(reach, consistency, cfg.problems, cfg.mastery, cfg.max_jump, cfg.target_digits,
                                cfg.advance, cfg.max_scale)

    # 3. Generate: unlabelled problems of the target lengths from this generation's own seed space.
    problems = tinyadd.disjoint([p for d, n in plan.problems.items()
                                 for p in tinyadd.mixed(f"self{g}", d, n, cfg.exact_share)], tiny_heldout_keys(cfg))

    # 4 + 5. Solve and filter: length filter and majority vote; no ground truth enters the data.
    labelled = self_label(problems)
    by_length = label_counts(problems, labelled)            # [asked, kept, right]: right is measured, never used
    precision = sum(v[2] for v in by_length.values()) / max(1, len(labelled))
    sft = [Example(p.prompt, a) for p, a in labelled]
    sampled_by = smp.record()
    lap("solve")

    # 6. Train: self-labels + replay of earlier self-labels; the seed data is the retention set (PCGrad).
    retention = lineage.read_examples(lineage.gen_dir(run, 0) / "data.jsonl")
    tcfg = train_config(cfg, course, seed, weight_decay=0.01)
    mix = oversample(sft, replay(run, recs, cfg.replay, seed), cfg.new_share)
    hist = train(model, tok, mix, retention, tcfg, progress=cfg.progress) if sft else {"loss_new": []}
    lap("train")

    # 7. Gate.
    metrics = measure_tiny(model, tok, cfg, gate_smp := samplers.candidate(model, tok, g))
    lap("gate")
    accept, reasons = decide(metrics, parent["metrics"], base["metrics"], cfg.ppl_tolerance,
                             cfg.refusal_tolerance, cfg.retention_tolerance)
    if not sft:
        accept, reasons = False, reasons + ["FAIL: no self-label passed the filters"]
    course, why = (controller.after_accept if accept else controller.after_rollback)(course)

    # 8. Checkpoint.
    rec = {"generation": g, "parent": parent["generation"], "accepted": accept, "metrics": metrics,
           "reach": plan.reach if accept else reach, "course": vars(course), "probe": consistency,
           "plan": {"targets": plan.targets, "problems": plan.problems, "samples": k},
           "data": {"problems": len(problems), "self_labelled": len(sft), "label_precision": precision,
                    "sampled": sampled[0],
                    "by_length": by_length},
           "train": summarize(hist), "sampler": {"parent": sampled_by, "gate": gate_smp.record()},
           "decisions": [*plan.decisions, *reasons, why], "seconds": lap.seconds}
    lineage.save_generation(run, rec, sft, [], model if accept else None, tok)
    return rec


def oversample(fresh: list[Example], old: list[Example], share: float) -> list[Example]:
    """``fresh`` repeated so that it is at least ``share`` of the training mix with ``old`` (replay):
    a generation's few labels of a new length are not drowned by thousands of replayed ones."""
    if not fresh or not old or share <= 0:
        return fresh + old
    reps = max(1, round(share / (1 - share) * len(old) / len(fresh)))
    return fresh * reps + old


def label_counts(problems: list, labelled: list) -> dict[str, list[int]]:
    """Per length: [problems asked, labels kept, labels that are right] (the last is measured, never used)."""
    out: dict[str, list[int]] = {}
    for p in problems:
        out.setdefault(str(p.digits), [0, 0, 0])[0] += 1
    for p, a in labelled:
        out[str(p.digits)][1] += 1
        out[str(p.digits)][2] += tinyadd.check(p, a)
    return out


# ===================================================================================== the run
RECIPES = {Recipe.CHAT: (chat_start, chat_generation), Recipe.TINYADD: (tiny_start, tiny_generation),
           Recipe.CODE: (coderun.code_start, coderun.code_generation)}       # (generation 0, generation g)


def run(cfg: EvolveConfig, out: Path, on_generation: Callable[[dict], None] | None = None) -> dict:
    """Run (or continue) the recipe in ``out`` until ``cfg.generations`` generations or the time budget."""
    out = Path(out)
    if dist.world().size > 1:
        if cfg.sampler is SamplerKind.VLLM:
            raise ConfigError("a data-parallel run (several processes) cannot start a vLLM engine in each; "
                              "use --sampler openai against one server, or one process")
        with dist.run_dir(out) as mine:          # the main process writes out; the others a private copy
            return {**_run(cfg, mine, on_generation if dist.world().main else None), "run_dir": str(out),
                    "processes": dist.world().size}
    return _run(cfg, out, on_generation)


def _run(cfg: EvolveConfig, out: Path, on_generation: Callable[[dict], None] | None = None) -> dict:
    lineage.init_run(out, cfg)
    recs = lineage.records(out)
    t0, spent = time.perf_counter(), sum(r.get("wall_s", 0) for r in recs)
    start, step = RECIPES[cfg.recipe]
    with Samplers(cfg) as samplers:       # one sampler set for the run (a vLLM engine outlives a generation)
        kw = {"samplers": samplers} if cfg.recipe in (Recipe.CHAT, Recipe.TINYADD) else {}
        while len(recs) <= cfg.generations:
            used = spent + time.perf_counter() - t0
            if recs and cfg.budget and used >= cfg.budget * 60:
                log.info("time budget of %.0f min spent (%.1f min); stopping after generation %d",
                         cfg.budget, used / 60, len(recs) - 1)
                break
            g0 = time.perf_counter()
            rec = start(cfg, out, **kw) if not recs else step(len(recs), cfg, out, recs, **kw)
            rec = finish(out, rec, time.perf_counter() - g0)
            recs.append(rec)
            lineage.write_summary(out, recs)
            if rec["accepted"]:
                keep = {rec["generation"], best(recs)["generation"]}
                lineage.prune(out, recs, keep)
            if on_generation:
                on_generation(rec)
    return summary(cfg, out, recs)


def finish(out: Path, rec: dict, wall_s: float) -> dict:
    """Record the wall time (rewrite lineage.json) and store an accepted model as a delta of its parent."""
    import json

    from ..fileio import atomic_write_json

    rec = {**json.loads((lineage.gen_dir(out, rec["generation"]) / "lineage.json").read_text()),
           "wall_s": round(wall_s, 1)}
    if rec.get("seconds"):      # what the phases did not book: writing the checkpoint
        rec["seconds"]["checkpoint"] = round(wall_s - sum(rec["seconds"].values()), 1)
    if rec["accepted"] and isinstance(rec["parent"], int):
        parent_rec = lineage.records(out)[rec["parent"]]
        delta = lineage.store_delta(out, rec["generation"], lineage.model_path(out, parent_rec))
        rec["delta"] = delta
    atomic_write_json(lineage.gen_dir(out, rec["generation"]) / "lineage.json", rec)
    return rec


def best(recs: list[dict]) -> dict:
    return max((r for r in recs if r["accepted"]), key=lambda r: (r["metrics"]["score"], r["generation"]))


def summary(cfg: EvolveConfig, out: Path, recs: list[dict]) -> dict:
    first, last = recs[0]["metrics"], lineage.latest_accepted(recs)["metrics"]
    keys = ("headline", "score", "retention", "ppl", "refusal_rate")
    return {"run_dir": str(out), "generations": len(recs) - 1, "accepted": sum(r["accepted"] for r in recs[1:]),
            "wall_s": round(sum(r.get("wall_s", 0) for r in recs), 1),
            "start": {k: first.get(k) for k in keys}, "final": {k: last.get(k) for k in keys},
            "final_heldout": last["heldout"], "best_generation": best(recs)["generation"],
            "latest_generation": lineage.latest_accepted(recs)["generation"]}


def resume(out: Path, on_generation: Callable[[dict], None] | None = None, **overrides) -> dict:
    """Continue the run in ``out`` with its own config (``overrides`` may extend generations or budget)."""
    import dataclasses

    cfg = lineage.load_config(out)
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
        from ..config import to_dict
        from ..fileio import atomic_write_json
        atomic_write_json(Path(out) / "run.json", {"format": lineage.RUN_FORMAT, "version": lineage.RUN_VERSION,
                                                   "config": to_dict(cfg)})
    return run(cfg, out, on_generation)
