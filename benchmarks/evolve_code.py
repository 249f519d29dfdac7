"""The code recipe's measurements: a model (generation 0 or any generation of a run) on HumanEval and on our
held-out code families, and the self-evolution run itself.

    # a model on HumanEval (greedy pass@1, pass@8 sampled on the first --sample-n problems) and on the
    # held-out problems of every code family (trained ones and HELDOUT_FAMILIES), strict and repaired:
    .venv/bin/python benchmarks/evolve_code.py eval [--model smollm2-135m] [--humaneval-n 164] [--samples 8]
        [--sample-n 164] [--families-n 2] [--json benchmarks/results/evolve_code/gen0.json]
    # the loop (``leanlm evolve smollm2-135m --recipe code`` runs the same):
    .venv/bin/python benchmarks/evolve_code.py run --out RUN [--generations 3] [--budget 60]
    # a run's generations (held-out families strict/repaired, retention, gate) plus HumanEval files, one table:
    .venv/bin/python benchmarks/evolve_code.py report --run RUN [--humaneval 0=gen0.json 2=gen2.json] [--json OUT]

``eval`` is resumable: each part (humaneval greedy, humaneval sampled, families) is written to the JSON as
soon as it is done and skipped when the JSON already holds it with the same settings.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leanlm.eval import codetasks, humaneval  # noqa: E402
from leanlm.eval.codeeval import CodeEvalConfig, solve, summarize, verdicts  # noqa: E402
from leanlm.eval.results import document  # noqa: E402
from leanlm.fileio import atomic_write_json  # noqa: E402
from leanlm.report.tables import render_table  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "evolve_code"


def family_problems(n: int, levels: tuple[int, ...] = codetasks.LEVELS) -> list:
    skills = codetasks.all_skills(codetasks.TRAIN_FAMILIES, levels) + codetasks.all_skills(codetasks.HELDOUT_FAMILIES, levels)
    return codetasks.heldout_set(skills, n)


def part(model, tok, name: str, problems: list, cfg: CodeEvalConfig, sampled: bool, k: int | None) -> dict:
    t0 = time.perf_counter()
    replies = solve(model, tok, problems, cfg, sampled=sampled, desc=name)
    t1 = time.perf_counter()
    res = summarize(problems, verdicts(problems, replies, cfg), k=k)
    res.update({"generate_s": round(t1 - t0, 1), "sandbox_s": round(time.perf_counter() - t1, 1),
                "examples": [{"id": p.key, "skill": p.skill, "reply": r[0]} for p, r in list(zip(problems, replies))[:6]]})
    return res


def split_families(res: dict) -> dict:
    """pass@1 per mode over the trained families' held-out problems and over the held-out families."""
    out = {}
    for mode in ("strict", "repaired"):
        by = res[mode]["by_skill"]
        held = [v for s, v in by.items() if s.split(":")[0] in codetasks.HELDOUT_FAMILIES]
        trained = [v for s, v in by.items() if s.split(":")[0] not in codetasks.HELDOUT_FAMILIES]
        out[mode] = {"trained_families": sum(trained) / max(1, len(trained)),
                     "heldout_families": sum(held) / max(1, len(held))}
    return out


def cmd_eval(args) -> dict:
    import torch

    import leanlm

    torch.set_num_threads(args.threads)
    path = Path(args.json)
    doc = json.loads(path.read_text()) if path.exists() else None
    results = doc["results"] if doc and doc["model"]["spec"] == args.model else {}
    model, tok = leanlm.load(args.model, dtype="fp32")
    cfg = CodeEvalConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, samples=args.samples,
                         seed=args.seed, workers=args.workers)
    he = humaneval.problems(args.humaneval_n) if args.humaneval_n else []
    plan = [("families", family_problems(args.families_n, tuple(args.levels)), False, None) if args.families_n else None,
            ("humaneval_greedy", he, False, None) if he else None,
            (f"humaneval_pass@{args.samples}", he[:args.sample_n], True, args.samples) if he and args.samples else None]
    settings = {"max_new_tokens": args.max_new_tokens, "humaneval_n": args.humaneval_n, "samples": args.samples,
                "sample_n": args.sample_n, "families_n": args.families_n, "seed": args.seed,
                "levels": list(args.levels)}
    for item in filter(None, plan):
        name, problems, sampled, k = item
        if name in results and results[name].get("settings") == settings:
            continue
        results[name] = {**part(model, tok, name, problems, cfg, sampled, k), "settings": settings}
        if name == "families":
            results[name]["split"] = split_families(results[name])
        results["humaneval_source"] = humaneval.source() if he else None
        atomic_write_json(path, document("evolve_code_eval", {"spec": args.model}, settings, results))
    return results


def render(results: dict) -> None:
    rows = []
    for name, r in results.items():
        if not isinstance(r, dict) or "strict" not in r:
            continue
        rows.append([name, str(r["n"]), f"{r['strict']['pass']:.1%}", f"{r['repaired']['pass']:.1%}",
                     f"{r['repaired']['test_share']:.1%}", ", ".join(f"{k} {v}" for k, v in
                                                                      list(r["repaired"]["errors"].items())[:3]),
                     f"{r['generate_s']:.0f}"])
        if "split" in r:
            for grp in ("trained_families", "heldout_families"):
                rows.append([f"  {grp}", "", f"{r['split']['strict'][grp]:.1%}", f"{r['split']['repaired'][grp]:.1%}",
                             "", "", ""])
    render_table("code: pass rates (strict = as written, repaired = fences/indentation only)",
                 ["set", "problems", "strict", "repaired", "tests passed (repaired)", "top errors (repaired)",
                  "generate s"], rows)


def cmd_run(args) -> dict:
    """The code recipe through the loop (the same as ``leanlm evolve MODEL --recipe code --out OUT``); an
    existing run directory is resumed (its own config, ``--generations`` / ``--budget`` may extend it)."""
    import dataclasses

    import torch

    from leanlm.evolve import loop
    from leanlm.evolve.config import preset

    torch.set_num_threads(args.threads)
    if (Path(args.out) / "run.json").is_file():
        return loop.resume(args.out, generations=args.generations, budget=args.budget)
    cfg = dataclasses.replace(preset(args.model, recipe="code"), generations=args.generations, budget=args.budget)
    return loop.run(cfg, args.out)


REPORT_KEYS = ("score", "score_strict", "transfer", "transfer_strict", "test_share", "retention", "ppl",
               "refusal_rate", "refusal_kept")


def cmd_report(args) -> dict:
    """Per generation of a code run: held-out pass@1 (repaired and strict) on the trained skills and the
    held-out families, arithmetic retention, perplexity, refusals, the data made and the gate's verdict;
    plus any HumanEval results given with ``--humaneval GEN=JSON``."""
    from leanlm.evolve import lineage

    recs = lineage.records(Path(args.run))
    gens = [{"generation": r["generation"], "accepted": r["accepted"], "wall_s": r.get("wall_s"),
             **{k: r["metrics"].get(k) for k in REPORT_KEYS}, "errors": r["metrics"].get("errors"),
             "errors_strict": r["metrics"].get("errors_strict"), "data": r.get("data"),
             "seconds": r.get("seconds"), "decisions": r.get("decisions")} for r in recs]
    he = {}
    for item in args.humaneval or []:
        g, _, path = item.partition("=")
        res = json.loads(Path(path).read_text())["results"]["humaneval_greedy"]
        he[g] = {"n": res["n"], "strict": res["strict"]["pass"], "repaired": res["repaired"]["pass"],
                 "errors_repaired": res["repaired"]["errors"], "errors_strict": res["strict"]["errors"], "file": path}
    return {"run": str(args.run), "generations": gens, "humaneval_greedy": he}


def render_report(res: dict) -> None:
    def f(v):
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    rows = [[str(g["generation"]), "yes" if g["accepted"] else "no", f(g["score"]), f(g["score_strict"]),
             f(g["transfer"]), f(g["transfer_strict"]), f(g["retention"]), f(g["ppl"]), f(g["refusal_rate"]),
             str((g["data"] or {}).get("sft", "-")), f((g["data"] or {}).get("sample_pass")), f(g["wall_s"])]
            for g in res["generations"]]
    render_table("code run: held-out pass@1 per generation (repaired / strict)",
                 ["gen", "accepted", "trained rep.", "trained strict", "held-out fam. rep.", "held-out fam. strict",
                  "arith retention", "ppl", "refusal", "sft", "sample pass", "wall s"], rows)
    if res["humaneval_greedy"]:
        render_table("HumanEval greedy pass@1", ["generation", "problems", "strict", "repaired", "top errors (repaired)"],
                     [[g, str(h["n"]), f"{h['strict']:.1%}", f"{h['repaired']:.1%}",
                       ", ".join(f"{k} {v}" for k, v in list(h["errors_repaired"].items())[:3])]
                      for g, h in res["humaneval_greedy"].items()])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("eval", help="a model on HumanEval and the held-out code families")
    e.add_argument("--model", default="smollm2-135m")
    e.add_argument("--humaneval-n", type=int, default=164)
    e.add_argument("--samples", type=int, default=8, help="k for pass@k (0 = greedy only)")
    e.add_argument("--sample-n", type=int, default=164, help="HumanEval problems that get k samples")
    e.add_argument("--families-n", type=int, default=2, help="held-out problems per family and level")
    e.add_argument("--levels", type=int, nargs="+", default=list(codetasks.LEVELS), help="family levels to score")
    e.add_argument("--max-new-tokens", type=int, default=192)
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--workers", type=int, default=2, help="sandbox subprocesses at a time")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--json", default=str(OUT / "gen0.json"))
    r = sub.add_parser("run", help="the code recipe of the self-evolution loop")
    r.add_argument("--model", default="smollm2-135m")
    r.add_argument("--out", required=True)
    r.add_argument("--generations", type=int, default=3)
    r.add_argument("--budget", type=float, default=60.0, help="wall-clock minutes (0 = no limit)")
    r.add_argument("--threads", type=int, default=2)
    rp = sub.add_parser("report", help="a code run's generations (and HumanEval results) as one table")
    rp.add_argument("--run", required=True, help="run directory")
    rp.add_argument("--humaneval", nargs="*", metavar="GEN=JSON", help="HumanEval results of `eval` per generation")
    rp.add_argument("--json", help="write the report here")
    args = ap.parse_args(argv)
    if args.cmd == "eval":
        render(cmd_eval(args))
    elif args.cmd == "report":
        res = cmd_report(args)
        render_report(res)
        if args.json:
            atomic_write_json(args.json, document("evolve_code_report", {"run": args.run}, {}, res))
    else:
        from leanlm.report.tables import render_mapping

        render_mapping("evolve (code recipe) summary", cmd_run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
