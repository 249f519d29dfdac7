"""The self-evolution goals: run the preset recipe for a spec (the settings behind benchmarks/EVOLVE.md)
and record the per-generation metrics. An existing run directory is continued (resume), so the script can
be stopped and re-run unattended.

    .venv/bin/python benchmarks/evolve.py --spec tiny-add      [--quick] [--out DIR] [--json OUT]
    .venv/bin/python benchmarks/evolve.py --spec smollm2-135m  [--quick] [--out DIR] [--json OUT]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leanlm.config import to_dict  # noqa: E402
from leanlm.eval.results import document  # noqa: E402
from leanlm.evolve import lineage, loop  # noqa: E402
from leanlm.evolve.config import preset  # noqa: E402
from leanlm.fileio import atomic_write_json  # noqa: E402
from leanlm.report.tables import render_table  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# --quick: the same recipe, small enough for a smoke run (minutes, not an hour); not the goal settings.
QUICK = {
    "tiny-add": dict(seed_digits=3, target_digits=5, seed_steps=800, seed_examples=8000, steps=80, problems=1000,
                     replay=2000, generations=2, budget=0),
    "smollm2-135m": dict(generations=1, problems=24, samples=4, steps=10, probe_n=8, heldout_n=16, ppl_tokens=2048,
                         judge_n=8, budget=0),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="tiny-add")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", help="run directory (default: benchmarks/results/evolve_runs/<spec>[-quick])")
    p.add_argument("--json")
    args = p.parse_args(argv)
    cfg = preset(args.spec)
    if args.quick:
        cfg = dataclasses.replace(cfg, **QUICK.get(args.spec, QUICK["tiny-add"]))
    tag = args.spec + ("-quick" if args.quick else "")
    out = Path(args.out or RESULTS / "evolve_runs" / tag)
    result = loop.resume(out) if (out / "run.json").is_file() else loop.run(cfg, out)
    recs = lineage.records(out)
    rows = [[str(r["generation"]), "yes" if r["accepted"] else "no", f"{r.get('wall_s', 0):.0f}",
             *("-" if r["metrics"].get(k) is None else f"{r['metrics'][k]:.3f}"
               for k in ("headline", "score", "retention", "ppl", "refusal_rate"))] for r in recs]
    render_table(f"evolve {tag} (measured under load)",
                 ["gen", "accepted", "wall s", "headline", "score", "retention", "ppl", "refusal"], rows)
    doc = document("evolve", {"spec": args.spec}, to_dict(lineage.load_config(out)),
                   {**result, "per_generation": [{k: r.get(k) for k in ("generation", "accepted", "wall_s", "metrics",
                                                                       "data", "judge", "train", "decisions",
                                                                       "seconds")}
                                                  for r in recs]})
    atomic_write_json(args.json or RESULTS / f"evolve_{tag.replace('-', '_')}.json", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
