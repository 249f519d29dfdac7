"""``evaluate``: perplexity, task accuracy, memory and speed of one model under one protocol."""
from __future__ import annotations

import dataclasses
import logging
import time

import torch

from ..config import to_dict
from .corpus import corpus_sha256, load_corpus, split_corpus
from .generate import GenerationConfig, generate
from .memory import disk_bytes, memory_bytes, peak_rss_bytes
from .perplexity import corpus_ids, perplexity
from .protocol import EvalConfig
from .results import document
from .speed import measure_speed
from .tasks import HELDOUT, check, parse_skill, problem_set

log = logging.getLogger(__name__)


def task_accuracy(model, tok, tasks: tuple[str, ...], n: int, gen: GenerationConfig,
                  progress: bool = True) -> dict[str, dict]:
    """Held-out accuracy per skill: {skill: {accuracy, correct, n, examples}}. One batched pass over all."""
    problems = [p for t in tasks for p in problem_set(*parse_skill(t), n=n, split=HELDOUT)]
    outputs = generate(model, tok, [p.prompt for p in problems], gen, progress=progress, desc="tasks")
    per: dict[str, dict] = {t: {"correct": 0, "n": 0, "examples": []} for t in tasks}
    for p, outs in zip(problems, outputs):
        ok = check(p, outs[0])
        r = per[p.skill]
        r["correct"] += ok
        r["n"] += 1
        if len(r["examples"]) < 3:
            r["examples"].append({"prompt": p.prompt, "answer": p.answer, "output": outs[0], "correct": ok})
    for r in per.values():
        r["accuracy"] = r["correct"] / r["n"] if r["n"] else float("nan")
    return per


def corpus_perplexity(model, tok, cfg: EvalConfig) -> dict:
    text = load_corpus(cfg.corpus)
    ids = corpus_ids(tok, split_corpus(text, "eval"), cfg.max_tokens)
    r = perplexity(model, ids, cfg.context, cfg.stride, cfg.ppl_batch, progress=cfg.progress)
    return {**dataclasses.asdict(r), "corpus": cfg.corpus or "pydoc_data/topics.py (prose)",
            "corpus_sha256": corpus_sha256(text)}


def evaluate(model, tok, cfg: EvalConfig = EvalConfig()) -> dict:
    """All measurements the protocol asks for, as a JSON-able dict."""
    out: dict = {"memory": {"weights_in_memory_bytes": memory_bytes(model)}}
    if cfg.perplexity:
        t0 = time.perf_counter()
        out["perplexity"] = corpus_perplexity(model, tok, cfg)
        out["perplexity"]["seconds"] = round(time.perf_counter() - t0, 2)
    if cfg.tasks and cfg.n:
        gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.gen_batch)
        t0 = time.perf_counter()
        out["tasks"] = task_accuracy(model, tok, cfg.tasks, cfg.n, gen, cfg.progress)
        accs = [r["accuracy"] for r in out["tasks"].values()]
        out["task_accuracy_mean"] = sum(accs) / len(accs)
        out["tasks_seconds"] = round(time.perf_counter() - t0, 2)
    if cfg.speed:
        log.info("measuring speed (%d repeats)", cfg.speed_repeats)
        out["speed"] = dataclasses.asdict(measure_speed(model, repeats=cfg.speed_repeats))
    out["memory"]["peak_rss_bytes"] = peak_rss_bytes()
    return out


def evaluate_spec(spec: str, cfg: EvalConfig = EvalConfig(), dtype: str = "bf16") -> dict:
    """Load ``spec`` and evaluate it; returns the full result document."""
    from ..models import load, model_dir

    t0 = time.perf_counter()
    model, tok = load(spec, dtype=dtype)
    load_s = time.perf_counter() - t0
    with torch.inference_mode():
        results = evaluate(model, tok, cfg)
    results["memory"]["weights_on_disk_bytes"] = disk_bytes(model_dir(spec))
    results["load_seconds"] = round(load_s, 2)
    info = {"spec": spec, "dtype": dtype, "parameters": sum(p.numel() for p in model.parameters()),
            "class": type(model).__name__}
    return document("eval", info, to_dict(cfg), results)
