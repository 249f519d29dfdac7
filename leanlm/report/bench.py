"""``leanlm bench``: the compression table, every row measured in one process against the same original.

For each row (``bf16`` is the original itself; every other row is a ``leanlm compress --method``), in order:
compress the spec into a work directory, load the result with ``leanlm.load``, and measure
  - bytes of weights on disk and in memory, and the reductions against the original;
  - perplexity (the eval protocol) and top-1 agreement with the original at every scored token;
  - out-of-domain perplexity: the same protocol on ``ood_corpus`` (GPL-3), text no method calibrates on;
  - held-out task accuracy, and greedy-output agreement with the original on the same prompts;
  - prefill and decode speed, timed alternately with the original in this process (same-run ratios).
A method that is not built yet (NotImplementedError / ModuleNotFoundError) makes its row
``unavailable`` with the reason; any other error makes it ``failed`` with the error, and the table goes on.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import require, to_dict
from ..eval.corpus import OOD_CORPUS, load_corpus, split_corpus
from ..eval.generate import GenerationConfig, generate
from ..eval.memory import disk_bytes, memory_bytes, peak_rss_bytes
from ..eval.perplexity import corpus_ids
from ..eval.protocol import DEFAULT_TASKS
from ..eval.results import document
from ..eval.tasks import HELDOUT, Problem, check, parse_skill, problem_set
from .claims import claim_for
from .measure import TokenPass, interleaved_speed, sequence_agreement, token_pass, top1_agreement

log = logging.getLogger(__name__)

ORIGINAL = "bf16"
DEFAULT_ROWS = ("bf16", "lossless", "int8", "smoothquant", "awq-w4", "lowrank", "combined")
UNAVAILABLE = (NotImplementedError, ModuleNotFoundError)


@dataclass(frozen=True)
class BenchConfig:
    rows: tuple[str, ...] = field(default=DEFAULT_ROWS, metadata={"help": "bf16 and/or compress methods"})
    dtype: str = field(default="bf16", metadata={"help": "dtype the original is loaded in"})
    remove: float | None = field(default=None, metadata={"help": "--remove passed to the low-rank rows (the "
                                                                 "combined row's embedding is full rank)"})
    work_dir: str | None = field(default=None, metadata={"help": "keep artifacts here (default: a temp dir)"})
    reuse: bool = field(default=False, metadata={"help": "reuse artifacts already in --work-dir"})
    corpus: str | None = field(default=None, metadata={"help": "perplexity corpus (default: pydoc topics)"})
    max_tokens: int = field(default=8192, metadata={"help": "tokens of the eval text scored"})
    ood_corpus: str | None = field(default=OOD_CORPUS, metadata={"help": "out-of-domain perplexity corpus "
                                                                          "(never calibrated on); '' for none"})
    context: int = field(default=512, metadata={"help": "perplexity window"})
    stride: int = field(default=512, metadata={"help": "perplexity stride"})
    ppl_batch: int = field(default=4, metadata={"help": "windows per forward pass"})
    tasks: tuple[str, ...] = field(default=DEFAULT_TASKS, metadata={"help": "skills as family:difficulty"})
    n: int = field(default=40, metadata={"help": "held-out problems per skill"})
    gen_batch: int = field(default=16, metadata={"help": "prompts per generation batch"})
    max_new_tokens: int = field(default=24, metadata={"help": "greedy tokens per answer"})
    speed_repeats: int = field(default=3, metadata={"help": "alternating timed runs per row (medians)"})
    speed_prompt_len: int = field(default=128, metadata={"help": "prefill prompt length"})
    speed_decode_tokens: int = field(default=32, metadata={"help": "decode steps timed"})
    quick: bool = field(default=False, metadata={"help": "quick budget (also passed to compress methods)"})
    progress: bool = field(default=True, metadata={"help": "progress bars"})

    def __post_init__(self) -> None:
        from ..compress.methods import METHOD_NAMES

        require(len(self.rows) > 0, "bench needs at least one row")
        require(len(set(self.rows)) == len(self.rows), f"duplicate rows in {self.rows}")
        for r in self.rows:
            require(r == ORIGINAL or r in METHOD_NAMES,
                    f"unknown bench row '{r}'; choose bf16 or {METHOD_NAMES}")
        require(self.remove is None or 0 < self.remove < 1, "remove must be in (0, 1)")
        require(self.context >= 2 and 0 < self.stride <= self.context,
                "need context >= 2 and 0 < stride <= context")
        require(self.max_tokens >= 2 and self.n >= 1 and self.gen_batch >= 1, "max_tokens, n, gen_batch")
        require(self.max_new_tokens >= 1 and self.speed_repeats >= 1, "max_new_tokens, speed_repeats >= 1")
        require(self.speed_prompt_len >= 1 and self.speed_decode_tokens >= 1, "speed sizes must be positive")
        for t in self.tasks:
            parse_skill(t)


# The `make demo` budget: a quarter of the tokens, a sixth of the problems, one timed pair per row. The quick
# skills are the two SmolLM2-135M gets about half right (add:1, mul:1), so "accuracy kept" compares ~24
# correct answers instead of a handful.
QUICK = {"max_tokens": 2048, "tasks": ("add:1", "mul:1"), "n": 24, "speed_repeats": 1,
         "speed_decode_tokens": 16, "quick": True}


# Under --quick, calibrating methods also get a smaller calibration budget (fewer sequences and grid points;
# each method's own config fields, passed through ``compress``'s options). Full runs use the methods'
# defaults.
QUICK_METHOD_OPTIONS: dict[str, dict] = {
    "smoothquant": {"calib_n": 8, "alpha_grid": (0.4, 0.5, 0.6), "alpha_eval_n": 2},
    "awq-w4": {"calib_n": 8, "awq_grid": 10, "clip_grid": 10, "awq_tokens": 512, "clip_tokens": 128},
    "lowrank": {"config": {"n_calib": 16}},
    "combined": {"config": {"calib_n": 8, "awq_calib_n": 8}},
}


def quick_config(**overrides) -> BenchConfig:
    return BenchConfig(**{**QUICK, **overrides})


@dataclass
class Measured:
    """One model's measurements (kept in memory for the comparisons)."""
    tokens: TokenPass
    ood: TokenPass | None
    outputs: list[str]
    output_ids: list[list[int]]
    correct: list[bool]
    skills: dict[str, float]
    seconds: dict[str, float]

    @property
    def accuracy(self) -> float:
        return sum(self.skills.values()) / len(self.skills)


def _problems(cfg: BenchConfig) -> list[Problem]:
    return [p for t in cfg.tasks for p in problem_set(*parse_skill(t), n=cfg.n, split=HELDOUT)]


def measure(model, tok, ids: torch.Tensor, problems: list[Problem], cfg: BenchConfig,
            ood_ids: torch.Tensor | None = None) -> Measured:
    t0 = time.perf_counter()
    tokens = token_pass(model, ids, cfg.context, cfg.stride, cfg.ppl_batch, cfg.progress)
    ood = None if ood_ids is None else token_pass(model, ood_ids, cfg.context, cfg.stride, cfg.ppl_batch,
                                                  cfg.progress)
    t1 = time.perf_counter()
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.gen_batch)
    outputs = [o[0] for o in generate(model, tok, [p.prompt for p in problems], gen, cfg.progress, "tasks")]
    t2 = time.perf_counter()
    correct = [check(p, o) for p, o in zip(problems, outputs)]
    skills = {}
    for t in cfg.tasks:
        mine = [c for p, c in zip(problems, correct) if p.skill == t]
        skills[t] = sum(mine) / len(mine)
    output_ids = [tok(o, add_special_tokens=False)["input_ids"] for o in outputs]
    return Measured(tokens, ood, outputs, output_ids, correct, skills,
                    {"perplexity": round(t1 - t0, 2), "tasks": round(t2 - t1, 2)})


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compare(ref: Measured, ref_speed: dict, ref_bytes: dict, m: Measured, speed: dict, nbytes: dict) -> dict:
    """The table's columns for one row, from its measurements and the original's."""
    seq = sequence_agreement(ref.output_ids, m.output_ids)
    return {
        **nbytes,
        "memory_reduction": 1 - nbytes["weights_memory_bytes"] / ref_bytes["weights_memory_bytes"],
        "disk_reduction": (1 - nbytes["weights_disk_bytes"] / ref_bytes["weights_disk_bytes"]
                           if nbytes["weights_disk_bytes"] and ref_bytes["weights_disk_bytes"] else None),
        "perplexity": m.tokens.perplexity,
        "perplexity_preserved": ref.tokens.perplexity / m.tokens.perplexity,
        "ood_perplexity": m.ood.perplexity if m.ood else None,
        "ood_perplexity_preserved": ref.ood.perplexity / m.ood.perplexity if m.ood and ref.ood else None,
        "task_accuracy": m.accuracy,
        "accuracy_preserved": _ratio(m.accuracy, ref.accuracy),
        "skills": m.skills,
        "answer_agreement": sum(a == b for a, b in zip(ref.outputs, m.outputs)) / len(ref.outputs),
        "greedy_token_agreement": seq["token_agreement"],
        "greedy_prefix_agreement": seq["prefix_agreement"],
        "top1_agreement": top1_agreement(ref.tokens, m.tokens),
        "speed": speed,
        "speed_original": ref_speed,
        "prefill_speedup": speed["prefill_tok_s"] / ref_speed["prefill_tok_s"],
        "decode_speedup": speed["decode_tok_s_b1"] / ref_speed["decode_tok_s_b1"],
        "decode_b8_speedup": speed["decode_tok_s_b8"] / ref_speed["decode_tok_s_b8"],
        "seconds": m.seconds,
    }


def _compress_row(spec: str, name: str, work: Path, cfg: BenchConfig) -> tuple[Path, dict, float]:
    from ..compress import compress
    from ..models.specs import MANIFEST

    out = work / name
    if cfg.reuse and (out / MANIFEST).is_file():
        log.info("bench %s: reusing %s", name, out)
        return out, {"reused": str(out)}, 0.0
    t0 = time.perf_counter()
    options = {"remove": None if name == "combined" else cfg.remove, "force": True, "json": None,
               **(QUICK_METHOD_OPTIONS.get(name, {}) if cfg.quick else {})}
    summary = compress(spec, name, out, options)
    return out, summary, time.perf_counter() - t0


def bench_row(name: str, spec: str, ctx: dict, cfg: BenchConfig, work: Path) -> dict:
    """Compress, load and measure one row; a row that cannot be built is marked, never fatal."""
    from ..models import load

    row: dict = {"name": name, "claim": dataclasses.asdict(c) if (c := claim_for(name)) else None}
    log.info("bench row %s", name)
    try:
        if name == ORIGINAL:
            model, tok, out, summary, secs = ctx["model"], ctx["tok"], ctx["model_dir"], {}, 0.0
        else:
            out, summary, secs = _compress_row(spec, name, work, cfg)
            model, tok = load(str(out), dtype=cfg.dtype)
        with torch.inference_mode():
            # The original was measured once already (a repeat gives identical numbers: tests check that).
            m = ctx["ref"] if name == ORIGINAL else measure(model, tok, ctx["ids"], ctx["problems"], cfg,
                                                               ctx["ood_ids"])
            ref_speed, speed = interleaved_speed(ctx["model"], model, cfg.speed_repeats, cfg.speed_prompt_len,
                                                 cfg.speed_decode_tokens)
        nbytes = {"weights_memory_bytes": memory_bytes(model), "weights_disk_bytes": disk_bytes(out)}
        row.update(status="ok", compress_seconds=round(secs, 2), artifact=str(out),
                   compress_summary=summary,
                   **compare(ctx["ref"], ref_speed, ctx["bytes"], m, speed, nbytes))
    except UNAVAILABLE as e:
        row.update(status="unavailable", reason=f"{type(e).__name__}: {e}")
        log.warning("bench %s unavailable: %s", name, e)
    except Exception as e:  # noqa: BLE001 - recorded in the row, logged with its traceback; CLI exits 1
        row.update(status="failed", reason=f"{type(e).__name__}: {e}")
        log.exception("bench %s failed", name)
    finally:
        gc.collect()
    return row


def run_bench(spec: str, cfg: BenchConfig = BenchConfig()) -> dict:
    """Measure every row of ``cfg.rows`` for model ``spec``; returns the result document (kind 'bench')."""
    from ..models import load, model_dir

    t_start = time.perf_counter()
    model, tok = load(spec, dtype=cfg.dtype)
    text = load_corpus(cfg.corpus)
    ids = corpus_ids(tok, split_corpus(text, "eval"), cfg.max_tokens)
    ood_ids = (corpus_ids(tok, split_corpus(load_corpus(cfg.ood_corpus), "eval"), cfg.max_tokens)
               if cfg.ood_corpus else None)
    problems = _problems(cfg)
    with torch.inference_mode():
        ref = measure(model, tok, ids, problems, cfg, ood_ids)
    temp = cfg.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="leanlm-bench-")) if temp else Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        source, mdir = spec, model_dir(spec)
        if mdir is None:  # built in memory (tiny-*): save it once so every method (lossless too) has files
            mdir = work / "original"
            model.save_pretrained(mdir, safe_serialization=True)
            tok.save_pretrained(mdir)
            source = str(mdir)
        ctx = {"model": model, "tok": tok, "ids": ids, "ood_ids": ood_ids, "problems": problems, "ref": ref, "model_dir": mdir,
               "bytes": {"weights_memory_bytes": memory_bytes(model), "weights_disk_bytes": disk_bytes(mdir)}}
        rows = [bench_row(name, source, ctx, cfg, work) for name in cfg.rows]
    finally:
        if temp:
            shutil.rmtree(work, ignore_errors=True)
    results = {
        "original": {"perplexity": ref.tokens.perplexity,
                     "ood_perplexity": ref.ood.perplexity if ref.ood else None, "ood_corpus": cfg.ood_corpus,
                     "task_accuracy": ref.accuracy, "skills": ref.skills,
                     "tokens_scored": ref.tokens.nll.numel(), "problems": len(problems), **ctx["bytes"]},
        "rows": rows,
        "peak_rss_bytes": peak_rss_bytes(),
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    info = {"spec": spec, "dtype": cfg.dtype, "parameters": sum(p.numel() for p in model.parameters()),
            "class": type(model).__name__}
    return document("bench", info, to_dict(cfg), results)
