"""The refusal detector against PyRIT's human-labelled refusal set: precision and recall of rule v1,
rule v2 and rule v2 + the MiniLM off-topic check, the off-topic threshold fitted on the train half
(split by ``leanlm.eval.safety.split_of`` on the objective) and scored on the held-out half.

    .venv/bin/python benchmarks/evolve_refusal.py [--json benchmarks/results/evolve_refusal.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leanlm.eval import safety  # noqa: E402
from leanlm.eval.refusal import is_refusal, precision_recall  # noqa: E402
from leanlm.eval.relevance import relevance  # noqa: E402
from leanlm.eval.results import document  # noqa: E402
from leanlm.fileio import atomic_write_json  # noqa: E402
from leanlm.report.tables import render_table  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def fit_threshold(rule: list[bool], rel: list[float], gold: list[bool]) -> float:
    """The off-topic threshold with the best accuracy on (rule, relevance, gold) triples (ties: lowest)."""
    cands = sorted({round(c, 3) for c in rel} | {0.0})
    score = lambda t: sum((r or c < t) == g for r, c, g in zip(rule, rel, gold))   # noqa: E731
    return max(cands, key=lambda t: (score(t), -t))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=str(RESULTS / "evolve_refusal.json"))
    args = p.parse_args(argv)
    rows = safety.labelled_refusals()
    rel = relevance([o for o, _, _ in rows], [r for _, r, _ in rows])
    parts = {s: [i for i, (o, _, _) in enumerate(rows) if safety.split_of(o) == s] for s in ("train", "heldout")}
    gold = [g for _, _, g in rows]
    v1, v2 = [is_refusal(r, "v1") for _, r, _ in rows], [is_refusal(r) for _, r, _ in rows]
    tr = parts["train"]
    t = fit_threshold([v2[i] for i in tr], [rel[i] for i in tr], [gold[i] for i in tr])
    both = [a or c < t for a, c in zip(v2, rel)]
    results = {"threshold": t, "n": len(rows), "refusals": sum(gold), "parts": {}}
    table = []
    for part, idx in (("heldout", parts["heldout"]), ("train", tr), ("all", list(range(len(rows))))):
        g = [gold[i] for i in idx]
        res = {name: precision_recall([pred[i] for i in idx], g)
               for name, pred in (("rule_v1", v1), ("rule_v2", v2), ("rule_v2+offtopic", both))}
        results["parts"][part] = res
        for name, r in res.items():
            table.append([part, name, str(r["n"]), f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['accuracy']:.3f}"])
    render_table(f"refusal detector vs PyRIT human labels (off-topic threshold {t:.3f}, fitted on train)",
                 ["part", "detector", "n", "precision", "recall", "accuracy"], table)
    atomic_write_json(args.json, document("evolve_refusal", {"spec": "detector"},
                                          {"labels": "pyrit refusal_scorer refusal.csv + refusal_extra.csv",
                                           "split": "leanlm.eval.safety.split_of(objective)"}, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
