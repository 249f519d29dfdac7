"""Prometheus text exposition (format 0.0.4) of the server's counters, gauges and latency histograms."""
from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(labels: tuple) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else ""


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.counters: dict[str, dict[tuple, float]] = defaultdict(lambda: defaultdict(float))
        self.histograms: dict[str, dict[tuple, list]] = defaultdict(dict)
        self.help: dict[str, str] = {}

    def inc(self, name: str, value: float = 1.0, help_: str = "", **labels) -> None:
        with self._lock:
            self.counters[name][tuple(sorted(labels.items()))] += value
            self.help.setdefault(name, help_)

    def observe(self, name: str, seconds: float, help_: str = "", **labels) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            h = self.histograms[name].setdefault(key, [[0] * len(LATENCY_BUCKETS), 0.0, 0])
            i = bisect.bisect_left(LATENCY_BUCKETS, seconds)
            if i < len(LATENCY_BUCKETS):
                h[0][i] += 1
            h[1] += seconds
            h[2] += 1
            self.help.setdefault(name, help_)

    def render(self, gauges: dict[str, list[tuple[dict, float]]]) -> str:
        lines: list[str] = []
        with self._lock:
            for name, series in sorted(self.counters.items()):
                lines += [f"# HELP {name} {self.help.get(name, '')}", f"# TYPE {name} counter"]
                lines += [f"{name}{_labels(k)} {v:g}" for k, v in sorted(series.items())]
            for name, series in sorted(self.histograms.items()):
                lines += [f"# HELP {name} {self.help.get(name, '')}", f"# TYPE {name} histogram"]
                for k, (counts, total, n) in sorted(series.items()):
                    running = 0
                    for edge, c in zip(LATENCY_BUCKETS, counts):
                        running += c
                        lines.append(f"{name}_bucket{_labels(k + (('le', f'{edge:g}'),))} {running}")
                    lines.append(f"{name}_bucket{_labels(k + (('le', '+Inf'),))} {n}")
                    lines += [f"{name}_sum{_labels(k)} {total:.6f}", f"{name}_count{_labels(k)} {n}"]
        for name, series in sorted(gauges.items()):
            lines.append(f"# TYPE {name} gauge")
            lines += [f"{name}{_labels(tuple(sorted(lab.items())))} {v:g}" for lab, v in series]
        return "\n".join(lines) + "\n"
