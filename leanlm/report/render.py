"""The report: Markdown plus a self-contained HTML page (tables, and plots inlined as base64 PNG).

Both formats are rendered from one list of blocks built from the result documents, and every number in a
table is formatted by the one function of its column (``COLUMNS``), so the report's numbers are the
JSON's numbers, rounded the stated way.
"""
from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..fileio import atomic_write_bytes, atomic_write_text
from . import plots


# ------------------------------------------------------------------------------------------ formats
def pct(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    s = f"{100 * x:.1f}"
    return ("0.0" if s == "-0.0" else s) + "%"


def times(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def mib(x: int | None) -> str:
    return "-" if x is None else f"{x / 2**20:.2f} MiB"


@dataclass(frozen=True)
class Column:
    header: str
    key: str                               # key in the row dict
    fmt: Callable[[object], str]


COLUMNS: tuple[Column, ...] = (
    Column("weights on disk", "weights_disk_bytes", mib),
    Column("weights in memory", "weights_memory_bytes", mib),
    Column("memory saved", "memory_reduction", pct),
    Column("disk saved", "disk_reduction", pct),
    Column("perplexity", "perplexity", num),
    Column("ppl kept", "perplexity_preserved", pct),
    Column("OOD ppl", "ood_perplexity", num),
    Column("OOD ppl kept", "ood_perplexity_preserved", pct),
    Column("task acc", "task_accuracy", pct),
    Column("acc kept", "accuracy_preserved", pct),
    Column("greedy tokens agree", "greedy_token_agreement", pct),
    Column("top-1 agree", "top1_agreement", pct),
    Column("prefill", "prefill_speedup", times),
    Column("decode b1", "decode_speedup", times),
    Column("decode b8", "decode_b8_speedup", times),
)

CLAIM_COLUMNS: tuple[tuple[str, str, str, Callable], ...] = (
    # (header, where, key, format): where is "claim" (the quoted figure) or "row" (our measurement)
    ("claimed memory saved", "claim", "memory_reduction", pct),
    ("our memory saved", "row", "memory_reduction", pct),
    ("our disk saved", "row", "disk_reduction", pct),
    ("claimed accuracy", "claim", "accuracy", pct),
    ("our acc kept", "row", "accuracy_preserved", pct),
    ("our ppl kept", "row", "perplexity_preserved", pct),
    ("claimed speed", "claim", "speedup", times),
    ("our decode b1", "row", "decode_speedup", times),
    ("our prefill", "row", "prefill_speedup", times),
)


def bench_table(bench: dict) -> tuple[list[str], list[list[str]]]:
    headers = ["row", "status", *(c.header for c in COLUMNS)]
    rows = []
    for r in bench["results"]["rows"]:
        if r["status"] == "ok":
            rows.append([r["name"], "ok", *(c.fmt(r.get(c.key)) for c in COLUMNS)])
        else:
            rows.append([r["name"], r["status"], *("-" for _ in COLUMNS)])
    return headers, rows


def row_notes(bench: dict) -> list[str]:
    """Why each row that is not 'ok' has no figures."""
    return [f"{r['name']}: {r['status']} - {r.get('reason', '')}" for r in bench["results"]["rows"]
            if r["status"] != "ok"]


def claims_table(bench: dict) -> tuple[list[str], list[list[str]]]:
    headers = ["row", "claimed for", *(h for h, *_ in CLAIM_COLUMNS)]
    rows = []
    for r in bench["results"]["rows"]:
        if not r.get("claim"):
            continue
        ok = r["status"] == "ok"
        cells = [fmt(r["claim"][key]) if where == "claim" else (fmt(r.get(key)) if ok else r["status"])
                 for _, where, key, fmt in CLAIM_COLUMNS]
        rows.append([r["name"], r["claim"]["technique"] + " (claim)", *cells])
    return headers, rows


def audit_table(audit: dict) -> tuple[list[str], list[list[str]]]:
    from .audit import SET_KIND

    headers = ["prompt set", "kind", "n", "flips", "flip rate", "lost", "gained", "acc original",
               "acc compressed"]
    rows = [[s, SET_KIND.get(s, "?"), str(r["n"]), str(r["flips"]), pct(r["flip_rate"]), str(r["lost"]),
             str(r["gained"]), pct(r["accuracy_original"]), pct(r["accuracy_compressed"])]
            for s, r in audit["results"]["sets"].items()]
    return headers, rows


def audit_extra_table(audit: dict) -> tuple[list[str], list[list[str]]]:
    res = audit["results"]
    rows = []
    for where, k in res.get("kl", {}).items():
        rows.append([f"KL(original||compressed), {where}", f"mean {num(k['kl_mean'], 6)} nats, max "
                     f"{num(k['kl_max'], 6)}, top-1 agree {pct(k['top1_agreement'])}"])
    for name in ("refusal", "refusal_jailbreak"):
        if name in res:
            r = res[name]
            rows.append([name.replace("_", " "), f"agreement {pct(r['agreement'])}; refusal rate "
                         f"{pct(r['refusal_rate_original'])} -> {pct(r['refusal_rate_compressed'])} "
                         f"(n={r['n']})"])
    return ["measure", "value"], rows


def flip_examples_table(audit: dict, limit: int = 6) -> tuple[list[str], list[list[str]]]:
    """A few answers that flipped, across sets: what was asked, and what each model said."""
    rows = []
    for s, r in audit["results"]["sets"].items():
        for ex in r.get("examples", []):
            rows.append([s, ex["prompt"], ex["answer"], ex["original"].strip()[:80],
                         ex["compressed"].strip()[:80]])
    return ["set", "prompt", "answer", "original said", "compressed said"], rows[:limit]


def _natural(key: str) -> tuple:
    """Sort key that puts tinyadd:2 before tinyadd:10 (digit runs compared as numbers)."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key))


def evolution_table(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    flat = [plots.flatten(r) for r in records]
    skills = sorted({k for f in flat for k in f if k.startswith("heldout.")}, key=_natural)
    keys = [k for k in ("headline", *skills, "retention", "refusal_rate", "perplexity", "ppl")
            if any(k in f for f in flat)]
    headers = ["generation", "accepted", *keys]
    rows = [[str(r.get("generation", i)), str(r.get("accepted", "-")),
             *(num(f[k]) if k in f else "-" for k in keys)] for i, (r, f) in enumerate(zip(records, flat))]
    return headers, rows


# ------------------------------------------------------------------------------------------ blocks
def _machine_line(doc: dict) -> str:
    m = doc.get("machine", {})
    mem = f", {m['memory_bytes'] / 2**30:.0f} GiB RAM" if m.get("memory_bytes") else ""
    return (f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores{mem}, torch {m.get('torch', '?')} "
            f"({m.get('torch_threads', '?')} threads); created {doc.get('created', '?')}.")


def build_blocks(bench: dict | None = None, audits: list[dict] = (), run: str | Path | None = None,
                 note: str | None = None) -> list[tuple]:
    """The report as blocks: ("h1"|"h2"|"p", text), ("table", headers, rows), ("img", file, png, alt)."""
    b: list[tuple] = [("h1", "leanlm report")]
    if note:
        b.append(("p", note))
    if bench:
        res, cfg = bench["results"], bench["protocol"]
        o = res["original"]
        b += [("h2", f"Compression table: {bench['model']['spec']}"),
              ("p", f"{bench['model']['parameters'] / 1e6:.1f}M parameters; "
                    f"original ({bench['model']['dtype']}): "
                    f"perplexity {num(o['perplexity'])} on {o['tokens_scored']} tokens, task accuracy "
                    f"{pct(o['task_accuracy'])} on {o['problems']} held-out problems "
                    f"({', '.join(cfg['tasks'])}); {'quick' if cfg.get('quick') else 'full'} budget, "
                    f"{res['seconds']:.0f} s in all. {_machine_line(bench)}"),
              ("table", *bench_table(bench)),
              *[("p", n) for n in row_notes(bench)],
              ("p", "Memory saved: weights held in memory after loading; disk saved: weight files. Kept: the "
                    "row's figure relative to the original (ppl kept = original ppl / row ppl; acc kept = "
                    "row task accuracy / original's). Greedy tokens agree: positions where the row's greedy "
                    "answer tokens equal the original's, over all task prompts; top-1 agree: the most likely "
                    "next token "
                    "matches at every scored token of the eval text. Speeds are ratios to the original timed "
                    "alternately in the same process (the bf16 row shows the noise of that ratio)."),
              ("h2", "Ours beside the commonly claimed figures"),
              ("p", "Rows marked (claim) quote figures commonly cited for these techniques; they are not our "
                    "measurements and their model, metric and hardware are unknown. Ours are measured "
                    "above."),
              ("table", *claims_table(bench))]
        png = plots.pareto_chart(bench)
        if png:
            b += [("h2", "Size vs perplexity"), ("img", "pareto.png", png, "size vs perplexity Pareto chart")]
    for a in audits:
        m = a["model"]
        b += [("h2", f"Fragility audit: {m['compressed']} vs {m['original']}"),
              ("p", f"Flips: the compressed model's extracted answer differs from the original's "
                    f"({a['results']['summary']['flips_total']} in all). {_machine_line(a)}"),
              ("table", *audit_table(a)), ("table", *audit_extra_table(a))]
        headers, flips = flip_examples_table(a)
        if flips:
            b += [("p", "Some answers that flipped:"), ("table", headers, flips)]
    if run:
        records = plots.read_metrics(run)
        b += [("h2", f"Self-evolution: {Path(run).name}"), ("table", *evolution_table(records))]
        png = plots.evolution_chart(records, Path(run).name)
        if png:
            b.append(("img", "evolution.png", png, "evolution curves"))
    return b


# ------------------------------------------------------------------------------------------ render
def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[tuple]) -> str:
    out = []
    for blk in blocks:
        kind = blk[0]
        if kind == "h1":
            out.append(f"# {blk[1]}")
        elif kind == "h2":
            out.append(f"## {blk[1]}")
        elif kind == "p":
            out.append(blk[1])
        elif kind == "table":
            headers, rows = blk[1], blk[2]
            lines = ["| " + " | ".join(map(_md_cell, headers)) + " |",
                     "|" + "|".join("---" for _ in headers) + "|"]
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{blk[3]}]({blk[1]})")
    return "\n\n".join(out) + "\n"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
        "th,td{border:1px solid #ccc;padding:3px 7px;"
        "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%}p{line-height:1.4}")


def to_html(blocks: list[tuple]) -> str:
    """One HTML file with everything inline: no external stylesheet, script or image."""
    e = html.escape
    title = next((blk[1] for blk in blocks if blk[0] == "h1"), "leanlm report")
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title>"
           f"<style>{_CSS}</style></head><body>"]
    for blk in blocks:
        kind = blk[0]
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{e(blk[1])}</{kind}>")
        elif kind == "table":
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in blk[1]) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in blk[2]]
            out.append("</table>")
        elif kind == "img":
            data = base64.b64encode(blk[2]).decode("ascii")
            out.append(f"<img alt='{e(blk[3])}' src='data:image/png;base64,{data}'>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(out_dir: str | Path, bench: dict | None = None, audits: list[dict] = (),
                 run: str | Path | None = None, note: str | None = None) -> dict:
    """Write report.md, report.html and the plots (PNG) into ``out_dir``; returns what it wrote."""
    if not bench and not audits and not run:
        raise ValueError("nothing to report: give a bench result, an audit result or a run directory")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blocks = build_blocks(bench, list(audits), run, note)
    written = []
    for blk in blocks:
        if blk[0] == "img":
            atomic_write_bytes(out / blk[1], blk[2])
            written.append(str(out / blk[1]))
    atomic_write_text(out / "report.md", to_markdown(blocks))
    atomic_write_text(out / "report.html", to_html(blocks))
    return {"directory": str(out), "files": [str(out / "report.md"), str(out / "report.html"), *written],
            "sections": [blk[1] for blk in blocks if blk[0] == "h2"]}


__all__ = ["write_report", "build_blocks", "to_markdown", "to_html", "bench_table", "claims_table",
           "audit_table", "COLUMNS"]
