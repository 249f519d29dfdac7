"""Plots as PNG bytes (matplotlib, Agg backend): the size-vs-perplexity Pareto chart and evolution curves.

Each function returns PNG bytes (or None when there is nothing to plot), so the renderer can inline them
in HTML as base64 and also write them next to the Markdown.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

# What evolution curves to draw from a run's metrics.jsonl, by key (first match wins per curve). The
# evolve loop's schema may nest values (e.g. {"gate": {"heldout": {"accuracy": ...}}}); keys are flattened
# with dots, and "gate.heldout.accuracy" matches the name "heldout_accuracy" (its tail, dots as underscores).
EVOLUTION_CURVES = {
    "held-out accuracy": ("headline", "heldout_accuracy", "heldout", "held_out_accuracy"),
    "retention": ("retention_accuracy", "retention"),
    "refusal rate": ("refusal_rate", "refusal"),
    "perplexity": ("perplexity", "ppl"),
}
X_KEYS = ("generation", "gen", "step", "iteration")


def _figure(width: float = 6.4, height: float = 4.0):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    return plt, fig, ax


def _png(plt, fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no timestamps: same data, same bytes
    plt.close(fig)
    return buf.getvalue()


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated (no other point is at most as large and at most as perplexed,
    and strictly better in one), sorted by size."""
    idx = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 <= y) and (x2 < x or y2 < y)
                        for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            idx.append(i)
    return sorted(idx, key=lambda i: points[i][0])


def size_of(row: dict) -> int | None:
    """The size a row is plotted at: its weight files on disk, or its bytes in memory for in-memory models."""
    return row.get("weights_disk_bytes") or row.get("weights_memory_bytes")


def pareto_chart(bench: dict) -> bytes | None:
    rows = [r for r in bench["results"]["rows"] if r.get("status") == "ok" and size_of(r)
            and math.isfinite(r.get("perplexity", math.nan))]
    if not rows:
        return None
    pts = [(size_of(r) / 2**20, r["perplexity"]) for r in rows]
    plt, fig, ax = _figure()
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="tab:blue", zorder=3)
    for i, (r, (x, y)) in enumerate(sorted(zip(rows, pts), key=lambda t: t[1])):
        # Stagger labels so points of similar size and perplexity (int8, smoothquant) stay readable.
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(5, 5 - 11 * (i % 3)), fontsize=8)
    front = pareto_front(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="tab:orange",
            label="Pareto front", zorder=2)
    ax.set_xlabel("weights (MiB; on disk, or in memory for models without files)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title(f"size vs perplexity - {bench['model'].get('spec', '')}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _png(plt, fig)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``RUN_DIR/metrics.jsonl`` (blank lines skipped; a bad line is an error naming it)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} an evolve run directory?")
    out = []
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{no} is not JSON: {e}") from e
    return out


def flatten(record: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested record, keyed by dotted path."""
    out = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def _matches(key: str, name: str) -> bool:
    norm = key.replace(".", "_")
    return norm == name or norm.endswith("_" + name)


def evolution_series(records: list[dict]) -> tuple[list[float], dict[str, list[float]]]:
    """(x values, {curve label: y values}) from metrics records; x is the generation when recorded."""
    flat = [flatten(r) for r in records]
    x_key = next((k for k in X_KEYS if all(k in f for f in flat)), None)
    xs = [f[x_key] for f in flat] if x_key else list(range(len(flat)))
    series = {}
    for label, names in EVOLUTION_CURVES.items():
        for name in names:
            keys = sorted({k for f in flat for k in f if _matches(k, name)}, key=lambda k: (k.count("."), k))
            if keys:
                key = keys[0]
                series[label] = [f.get(key, math.nan) for f in flat]
                break
    return xs, series


def evolution_chart(records: list[dict], title: str = "self-evolution") -> bytes | None:
    xs, series = evolution_series(records)
    rates = {k: v for k, v in series.items() if k != "perplexity"}
    if not records or not series:
        return None
    plt, fig, ax = _figure()
    for label, ys in rates.items():
        ax.plot(xs, ys, marker="o", label=label)
    for x, r in zip(xs, records):
        if r.get("accepted") is False:
            ax.axvline(x, color="red", alpha=0.2)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation (red: rolled back)")
    ax.set_ylabel("rate")
    ax.set_ylim(-0.02, 1.02)
    if "perplexity" in series:
        ax2 = ax.twinx()
        ax2.plot(xs, series["perplexity"], marker="s", color="tab:gray", linestyle=":", label="perplexity")
        ax2.set_ylabel("perplexity")
        ax2.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if rates:
        ax.legend(loc="upper left", fontsize=8)
    return _png(plt, fig)
