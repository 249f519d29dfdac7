"""The evidence in one run: the compression table, the fragility audit of each compressed row, the report.

    .venv/bin/python benchmarks/bench.py [--quick] [--spec smollm2-135m] [--rows ...] [--json OUT]
                                         [--report DIR] [--run RUN_DIR] [--audit-rows ...]

1. ``leanlm bench SPEC`` (full budget unless --quick): every row compressed, loaded and measured against
   the original in this process; compressed artifacts are kept in a temporary directory for step 2.
2. ``leanlm audit`` of each audited row against the original (the original's answers computed once).
3. The report (Markdown + self-contained HTML, Pareto chart, evolution curves of an evolve run directory
   when one is given or found under benchmarks/results/).
Writes benchmarks/results/bench.json, bench_audit_<row>.json and bench_report/ by default (bench_quick* with
--quick); the report can be
rebuilt from them with ``leanlm report --bench ... --audit ... [--run RUN_DIR] -o DIR``.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from leanlm import load
from leanlm.config import to_dict
from leanlm.eval.results import document
from leanlm.evolve import lineage
from leanlm.fileio import atomic_write_json
from leanlm.report.audit import AuditConfig, answers, audit_models, prompt_sets
from leanlm.report.bench import DEFAULT_ROWS, ORIGINAL, BenchConfig, quick_config, run_bench
from leanlm.report.cli import show_audit, show_bench
from leanlm.report.render import write_report

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
log = logging.getLogger("bench")


def find_run(results: Path, spec: str = "smollm2-135m") -> Path | None:
    """The evolve run to chart: the most recent run directory under ``results`` (one holding metrics.jsonl)
    whose spec is ``spec`` (the benchmarked model), else the most recent of any."""
    runs = sorted(results.rglob("metrics.jsonl"), key=lambda p: p.stat().st_mtime)
    same = [r for r in runs if _run_spec(r.parent) == spec]
    return (same or runs)[-1].parent if runs else None


def _run_spec(run: Path) -> str | None:
    try:
        return lineage.load_config(run).spec
    except (OSError, ValueError, KeyError, TypeError):      # not an evolve run of a format we read
        return None


def audit_rows(spec: str, bench: dict, rows: list[str], cfg: AuditConfig) -> list[dict]:
    """Audit each listed row's artifact against the original; the original's answers are computed once."""
    todo = [r for r in bench["results"]["rows"] if r["name"] in rows and r["status"] == "ok" and r.get("artifact")
            and r["name"] != ORIGINAL]
    if not todo:
        return []
    original, tok = load(spec, dtype=cfg.dtype)
    _, sets = prompt_sets(cfg)
    with torch.inference_mode():
        reference = answers(original, tok, cfg, sets)
    docs = []
    for r in todo:
        log.info("audit %s", r["name"])
        model, _ = load(r["artifact"], dtype=cfg.dtype)
        res = audit_models(original, model, tok, cfg, reference=reference)
        info = {"original": spec, "compressed": f"{spec} {r['name']}", "dtype": cfg.dtype,
                "parameters": sum(p.numel() for p in original.parameters())}
        docs.append(document("audit", info, to_dict(cfg), res))
        show_audit(docs[-1])
        del model
    return docs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="smollm2-135m")
    p.add_argument("--quick", action="store_true", help="the `make demo` budget")
    p.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS))
    p.add_argument("--audit-rows", nargs="*", default=None,
                   help="rows to audit (default: every compressed row; --quick: lossless and int8)")
    p.add_argument("--json", default=None, help="default: benchmarks/results/bench.json (--quick: bench_quick.json)")
    p.add_argument("--audit-prefix", default=None,
                   help="each audit is written to PREFIX<row>.json (default: results/bench[_quick]_audit_)")
    p.add_argument("--report", default=None, help="default: benchmarks/results/bench[_quick]_report/")
    p.add_argument("--run", default=None, help="evolve run directory for the report (default: newest found)")
    args = p.parse_args(argv)
    stem = "bench_quick" if args.quick else "bench"
    args.json = args.json or str(RESULTS / f"{stem}.json")
    args.audit_prefix = args.audit_prefix or str(RESULTS / f"{stem}_audit_")
    args.report = args.report or str(RESULTS / f"{stem}_report")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="leanlm-bench-"))
    try:
        base = quick_config(progress=False) if args.quick else BenchConfig(progress=False)
        from dataclasses import replace

        cfg = replace(base, rows=tuple(args.rows), work_dir=str(work))
        bench = run_bench(args.spec, cfg)
        show_bench(bench)
        atomic_write_json(args.json, bench)
        audited = args.audit_rows if args.audit_rows is not None else (
            ["lossless", "int8"] if args.quick else [r for r in args.rows if r != ORIGINAL])
        acfg = AuditConfig(progress=False, n=4 if args.quick else 10, jailbreak=not args.quick,
                           kl_tokens=1024 if args.quick else 2048)
        audits = audit_rows(args.spec, bench, audited, acfg)
        for a in audits:
            atomic_write_json(f"{args.audit_prefix}{a['model']['compressed'].split()[-1]}.json", a)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    run = Path(args.run) if args.run else find_run(RESULTS, args.spec)
    note = (f"Measured by benchmarks/bench.py{' --quick' if args.quick else ''} in "
            f"{time.perf_counter() - t0:.0f} s. Timings on a shared machine are noisy; speed columns are same-run "
            "ratios (original and row timed alternately).")
    write_report(args.report, bench=bench, audits=audits, run=run, note=note)
    log.info("wrote %s, %d audits (%s*.json) and %s/", args.json, len(audits), args.audit_prefix, args.report)
    return 1 if any(r["status"] == "failed" for r in bench["results"]["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
