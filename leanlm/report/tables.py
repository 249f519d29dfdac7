"""Readable terminal tables (rich) for result documents."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console()


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def render_eval(doc: dict) -> None:
    r, m = doc["results"], doc["model"]
    t = Table(title=f"leanlm eval · {m['spec']} ({m['dtype']}, {m['parameters'] / 1e6:.1f}M params)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    if "perplexity" in r:
        p = r["perplexity"]
        t.add_row("perplexity", f"{p['perplexity']:.3f}  ({p['tokens_scored']} tokens)")
    for skill, a in r.get("tasks", {}).items():
        t.add_row(f"accuracy {skill}", f"{a['accuracy']:.1%}  ({a['correct']}/{a['n']})")
    if "task_accuracy_mean" in r:
        t.add_row("accuracy (mean)", f"{r['task_accuracy_mean']:.1%}")
    mem = r.get("memory", {})
    t.add_row("weights on disk", fmt_bytes(mem.get("weights_on_disk_bytes")))
    t.add_row("weights in memory", fmt_bytes(mem.get("weights_in_memory_bytes")))
    t.add_row("peak RSS", fmt_bytes(mem.get("peak_rss_bytes")))
    if "speed" in r:
        s = r["speed"]
        t.add_row("prefill tok/s", f"{s['prefill_tok_s']:.0f}")
        t.add_row("decode tok/s (batch 1)", f"{s['decode_tok_s_b1']:.1f}")
        t.add_row("decode tok/s (batch 8)", f"{s['decode_tok_s_b8']:.1f}")
    if "load_seconds" in r:
        t.add_row("load time", f"{r['load_seconds']:.1f} s")
    console.print(t)


def render_mapping(title: str, doc: dict) -> None:
    """A two-column table of a flat summary dict (nested values shown compactly)."""
    t = Table(title=title)
    t.add_column("key")
    t.add_column("value", justify="right")
    for k, v in doc.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        elif isinstance(v, (dict, list)):
            v = str(v) if len(str(v)) < 80 else f"<{type(v).__name__} of {len(v)}>"
        t.add_row(str(k), str(v))
    console.print(t)


def render_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    """A rich table from already formatted cells (the report's tables, shown in the terminal)."""
    t = Table(title=title)
    for i, h in enumerate(headers):
        t.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
    for r in rows:
        t.add_row(*r)
    # Wide tables stay readable in logs and pipes (no terminal width to fit).
    (console if console.is_terminal else Console(width=max(console.width, 220))).print(t)
