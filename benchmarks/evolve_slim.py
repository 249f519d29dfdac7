"""Slim run directories for git: each generation's bulky ``data.jsonl`` / ``pairs.jsonl`` (or ``.gz``)
is replaced by its first ``--keep`` rows (``data.sample.jsonl``) and ``slim.json``, which records the full
file's row count and SHA-256 (the one in ``lineage.json`` still identifies it). Metrics, decisions,
configs and plots stay. A slimmed run keeps its reports and lineage but cannot be resumed exactly (replay
draws from the full data).

    .venv/bin/python benchmarks/evolve_slim.py benchmarks/results/evolve_runs/*  [--keep 50] [--json OUT]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leanlm.evolve import lineage  # noqa: E402
from leanlm.fileio import atomic_write_json, sha256_file  # noqa: E402
from leanlm.report.tables import render_table  # noqa: E402


def slim_generation(d: Path, keep: int) -> dict:
    out = {}
    for stem in ("data", "pairs"):
        for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
            path = d / name
            if not path.is_file():
                continue
            rows = lineage.read_rows(path if name.endswith(".jsonl") else d / f"{stem}.jsonl")
            out[name] = {"rows": len(rows), "bytes": path.stat().st_size, "sha256": sha256_file(path), "kept": min(keep, len(rows))}
            lineage.write_jsonl(d / f"{stem}.sample.jsonl", rows[:keep])
            path.unlink()
    if out:
        atomic_write_json(d / "slim.json", {"format": "leanlm.evolve.slim", "version": 1, "removed": out})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--keep", type=int, default=50)
    p.add_argument("--json")
    args = p.parse_args(argv)
    table, doc = [], {}
    for run in args.runs:
        if not (run / "run.json").is_file():
            raise SystemExit(f"{run} is not an evolve run directory (no run.json)")
        removed = {d.name: r for d in sorted(run.glob("gen-[0-9][0-9][0-9]")) if (r := slim_generation(d, args.keep))}
        rows = sum(v["rows"] for r in removed.values() for v in r.values())
        size = sum(v["bytes"] for r in removed.values() for v in r.values())
        doc[str(run)] = {"generations": len(removed), "rows": rows, "bytes": size}
        table.append([str(run), str(len(removed)), str(rows), f"{size / 2**20:.1f} MiB"])
    render_table("slimmed run directories", ["run", "generations", "rows removed", "bytes removed"], table)
    if args.json:
        atomic_write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
