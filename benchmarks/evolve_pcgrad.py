"""PCGrad ablation: the same self-evolution run with and without gradient surgery (same seed, same budget).

Both arms start from one generation-0 seed model (trained once, copied), then run the tinyadd recipe
(self-labelled longer additions as new data, the ground-truth seed data as the retention set). Reported
per generation: retention (held-out accuracy on the seed lengths), score (held-out accuracy beyond them),
how many train steps had conflicting gradients, and the mean cosine between new and retention gradients.

    .venv/bin/python benchmarks/evolve_pcgrad.py [--quick] [--json OUT]
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leanlm.config import to_dict  # noqa: E402
from leanlm.eval.results import document  # noqa: E402
from leanlm.evolve import lineage, loop  # noqa: E402
from leanlm.evolve.config import EvolveConfig, preset  # noqa: E402
from leanlm.fileio import atomic_write_json  # noqa: E402
from leanlm.report.tables import render_table  # noqa: E402

# The tiny-add preset (the recipe behind the 12-digit goal), three generations past the seed lengths.
FULL = dataclasses.replace(preset("tiny-add"), generations=3, budget=0, target_digits=16, progress=False)
# Seed fields: a seed model trained under these settings can be shared (--seed-run).
SEED_FIELDS = ("spec", "seed", "seed_digits", "seed_examples", "seed_steps", "seed_lr", "batch_size", "target_digits",
               "heldout_n", "dtype")
QUICK = dataclasses.replace(
    FULL, spec="tiny-llama", generations=2, problems=80, samples=3, steps=20, batch_size=64, lr=1e-3, replay=100,
    probe_n=20, heldout_n=20, gen_batch=256, seed_digits=1, target_digits=2, seed_examples=100, seed_steps=400,
    seed_lr=3e-3, min_vote=0.5, max_jump=1)


def run_arms(cfg: EvolveConfig, work: Path, seed_run: Path | None = None) -> dict:
    """Both arms from one generation 0: ``seed_run``'s (an earlier run with the same seed settings), or a
    seed model trained here."""
    if seed_run is not None:
        theirs = lineage.load_config(seed_run)
        diff = [f for f in SEED_FIELDS if getattr(theirs, f) != getattr(cfg, f)]
        if diff:
            raise SystemExit(f"{seed_run}: its seed settings differ from this ablation's ({', '.join(diff)})")
    else:
        seed_run = work / "seed"
        loop.run(dataclasses.replace(cfg, generations=0), seed_run)      # generation 0 only, shared
    arms = {}
    for surgery in (True, False):
        arm_cfg = dataclasses.replace(cfg, surgery=surgery)
        out = work / ("pcgrad" if surgery else "plain")
        out.mkdir(parents=True)
        shutil.copytree(lineage.gen_dir(seed_run, 0), lineage.gen_dir(out, 0))
        lineage.init_run(out, arm_cfg)
        t0 = time.perf_counter()
        loop.run(arm_cfg, out)
        recs = lineage.records(out)
        arms["pcgrad" if surgery else "plain"] = {
            "seconds": round(time.perf_counter() - t0, 1),
            "generations": [{"generation": r["generation"], "accepted": r["accepted"],
                             "retention": r["metrics"]["retention"], "score": r["metrics"]["score"],
                             "heldout": r["metrics"]["heldout"],
                             "conflicts": (r.get("train") or {}).get("conflicts"),
                             "mean_cosine": (r.get("train") or {}).get("mean_cosine"),
                             "loss_ret_last": (r.get("train") or {}).get("loss_ret_last")} for r in recs]}
    return arms


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny-llama, 1 -> 2 digits (about a minute)")
    p.add_argument("--seed-run", type=Path, help="reuse this tinyadd run's generation 0 (same seed settings)")
    p.add_argument("--generations", type=int, help="generations per arm (default: the config's)")
    p.add_argument("--json", default=str(Path(__file__).parent / "results" / "evolve_pcgrad.json"))
    args = p.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.generations is not None:
        cfg = dataclasses.replace(cfg, generations=args.generations)
    with tempfile.TemporaryDirectory(prefix="evolve-pcgrad-") as tmp:
        arms = run_arms(cfg, Path(tmp), args.seed_run)
    rows = []
    for name, arm in arms.items():
        for g in arm["generations"]:
            rows.append([name, str(g["generation"]), "yes" if g["accepted"] else "no", f"{g['retention']:.3f}",
                         f"{g['score']:.3f}", str(g["conflicts"]), "-" if g["mean_cosine"] is None else f"{g['mean_cosine']:.3f}"])
    render_table(f"PCGrad ablation ({'quick' if args.quick else 'full'}, measured under load)",
                 ["arm", "gen", "accepted", "retention", "score", "conflicting steps", "mean cos"], rows)
    doc = document("evolve_pcgrad", {"spec": cfg.spec}, to_dict(cfg),
                   {"quick": args.quick, "seed_run": str(args.seed_run) if args.seed_run else None, "arms": arms})
    atomic_write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
