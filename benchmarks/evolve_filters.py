"""How precise are the tiny recipe's self-labels, and how many survive, under stricter label-free filters?

Takes one model of a tinyadd run, samples answers to fresh problems of the given lengths (a+b and b+a,
``--samples`` each at the run's temperature), then applies the filter of ``leanlm.evolve.tinyadd.label``
with several vote thresholds and sample counts. Reported per setting: yield (share of problems that get a
label) and precision (share of kept labels that are right; ground truth is used here to measure only).

    .venv/bin/python benchmarks/evolve_filters.py RUN_DIR [--generation G] [--digits 11 12 13] [--json OUT]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leanlm.config import to_dict  # noqa: E402
from leanlm.eval.results import document  # noqa: E402
from leanlm.evolve import lineage, tinyadd  # noqa: E402
from leanlm.evolve.solve import answers  # noqa: E402
from leanlm.fileio import atomic_write_json  # noqa: E402
from leanlm.models import load  # noqa: E402
from leanlm.report.tables import render_table  # noqa: E402

VOTES = (0.6, 0.8, 1.0)


def filter_table(problems: list, outs: list[list[str]], ks: tuple[int, ...], votes=VOTES, commute: bool = True) -> list[dict]:
    """``outs[i]`` holds the samples of ``problems[i]`` (first half of the rows) and of its swap (second half).
    For each (k samples per order, vote threshold): yield and precision of the kept labels."""
    n, rows = len(problems), []
    for k in ks:
        for vote in votes:
            kept = right = 0
            for i, p in enumerate(problems):
                orders = [outs[i][:k], outs[n + i][:k]] if commute else [outs[i][:k]]
                label = tinyadd.label(p, orders, vote)
                if label is not None:
                    kept += 1
                    right += tinyadd.check(p, label)
            rows.append({"samples": k, "min_vote": vote, "yield": kept / n, "precision": right / max(1, kept),
                         "kept": kept, "right": right})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a tinyadd run directory")
    ap.add_argument("--generation", type=int, help="which generation's model (default: the latest accepted)")
    ap.add_argument("--digits", type=int, nargs="+", default=[11, 12, 13])
    ap.add_argument("--n", type=int, default=300, help="problems per length")
    ap.add_argument("--samples", type=int, default=10, help="samples per order (the table also shows 5)")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "evolve_filters.json"))
    args = ap.parse_args(argv)
    cfg, recs = lineage.load_config(args.run), lineage.records(args.run)
    rec = recs[args.generation] if args.generation is not None else lineage.latest_accepted(recs)
    model, tok = load(lineage.model_path(args.run, rec), dtype=cfg.dtype)
    results, rows = {}, []
    for d in args.digits:
        problems = tinyadd.mixed("filters", d, args.n, cfg.exact_share)
        asked = problems + [tinyadd.swapped(p) for p in problems]
        outs = answers(model, tok, [p.prompt for p in asked], args.samples, cfg.temperature, cfg.target_digits + 2,
                       seed=12345, chat=False, batch_size=cfg.gen_batch, progress=cfg.progress, desc=f"{d} digits")
        sample_acc = sum(tinyadd.check(p, a) for p, o in zip(problems, outs) for a in o) / (len(problems) * args.samples)
        table = filter_table(problems, outs, tuple(sorted({min(5, args.samples), args.samples})))
        results[str(d)] = {"sample_accuracy": sample_acc, "filters": table}
        rows += [[str(d), str(r["samples"]), f"{r['min_vote']:.1f}", f"{r['yield']:.3f}", f"{r['precision']:.3f}"]
                 for r in table]
    render_table(f"self-label filters: {args.run.name} generation {rec['generation']} (a+b and b+a, length filter)",
                 ["digits", "samples / order", "min vote", "yield", "precision"], rows)
    doc = document("evolve_filters", {"spec": cfg.spec, "run": str(args.run), "generation": rec["generation"]},
                   to_dict(cfg), {"n": args.n, "by_digits": results})
    atomic_write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
