"""CLI verbs of the report package: ``bench``, ``audit`` and ``report`` (registered by ``leanlm.cli``)."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def _config(cls, base, args: argparse.Namespace):
    """``base`` (a config instance) with every option the user gave on the command line applied."""
    import dataclasses

    from ..config import from_dict, to_dict

    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    return from_dict(cls, {**to_dict(base), **given})


def _write_json(path: str | None, doc: dict) -> None:
    if path:
        from ..fileio import atomic_write_json

        atomic_write_json(path, doc)
        log.info("wrote %s", path)


def _read_doc(path: str, kind: str) -> dict:
    from ..eval.results import validate

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{kind} result not found: {p}")
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not JSON: {e}") from e
    validate(doc)
    if doc["kind"] != kind:
        raise ValueError(f"{p} is a '{doc['kind']}' result, not '{kind}'")
    return doc


def show_bench(doc: dict) -> None:
    from .render import bench_table, claims_table, row_notes
    from .tables import render_table

    render_table(f"leanlm bench · {doc['model']['spec']} (all rows timed in one process)", *bench_table(doc))
    for note in row_notes(doc):
        log.warning("%s", note)
    headers, rows = claims_table(doc)
    if rows:
        render_table("ours beside the commonly claimed figures (claims are not measurements)", headers, rows)


def show_audit(doc: dict) -> None:
    from .render import audit_extra_table, audit_table
    from .tables import render_table

    m = doc["model"]
    render_table(f"leanlm audit · {m['compressed']} vs {m['original']}", *audit_table(doc))
    render_table("divergence and refusals", *audit_extra_table(doc))


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchConfig, quick_config, run_bench

    cfg = _config(BenchConfig, quick_config() if args.quick else BenchConfig(), args)
    doc = run_bench(args.spec, cfg)
    show_bench(doc)
    _write_json(args.json, doc)
    if args.report:
        from .render import write_report

        written = write_report(args.report, bench=doc, run=args.run)
        log.info("report written to %s", written["directory"])
    failed = [r["name"] for r in doc["results"]["rows"] if r["status"] == "failed"]
    if failed:
        log.error("rows failed: %s (see the log above)", ", ".join(failed))
    return 1 if failed else 0


def cmd_audit(args: argparse.Namespace) -> int:
    from .audit import AuditConfig, audit_specs

    cfg = _config(AuditConfig, AuditConfig(), args)
    doc = audit_specs(args.original, args.compressed, cfg)
    show_audit(doc)
    _write_json(args.json, doc)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .render import write_report
    from .tables import render_mapping

    bench = _read_doc(args.bench, "bench") if args.bench else None
    audits = [_read_doc(a, "audit") for a in args.audit or ()]
    written = write_report(args.output, bench=bench, audits=audits, run=args.run, note=args.note)
    render_mapping("report", written)
    return 0


def register(sub) -> None:
    from ..config import add_arguments
    from .audit import AuditConfig
    from .bench import BenchConfig

    b = sub.add_parser("bench", help="the compression table: every method measured against the original")
    b.add_argument("spec", help="model spec (smollm2-135m, tiny-*, a model directory, ...)")
    b.add_argument("--json", metavar="OUT", help="also write the result document here")
    b.add_argument("--report", metavar="DIR", help="also write the Markdown/HTML report here")
    b.add_argument("--run", metavar="RUN_DIR", help="add an evolve run's curves to the report")
    add_arguments(b, BenchConfig)
    b.set_defaults(func=cmd_bench)

    a = sub.add_parser("audit", help="answer flips, KL and refusal agreement of a compressed model")
    a.add_argument("original", help="the original model spec")
    a.add_argument("compressed", help="the compressed model (a leanlm output directory or any spec)")
    a.add_argument("--json", metavar="OUT")
    add_arguments(a, AuditConfig)
    a.set_defaults(func=cmd_audit)

    r = sub.add_parser("report", help="Markdown + self-contained HTML report from bench/audit/evolve results")
    r.add_argument("--bench", metavar="JSON", help="a `leanlm bench --json` result")
    r.add_argument("--audit", metavar="JSON", nargs="+", help="`leanlm audit --json` results")
    r.add_argument("--run", metavar="RUN_DIR", help="an evolve run directory (metrics.jsonl)")
    r.add_argument("--note", default="", help="a line under the title (how and where it was measured)")
    r.add_argument("-o", "--output", required=True, metavar="DIR")
    r.set_defaults(func=cmd_report)
