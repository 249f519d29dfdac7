"""Versions from an evolve run directory (through ``leanlm.evolve.lineage``'s public functions), and the
watcher that swaps in each generation the loop accepts."""
from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
from pathlib import Path

from ..evolve import lineage
from .versions import GATE_KEYS, Registry, Version

log = logging.getLogger(__name__)


def is_run(spec: str) -> bool:
    return (Path(spec) / "run.json").is_file()


def _restorer(run: Path, generation: int):
    """A context manager factory that rebuilds a generation stored as a lossless delta into a temp dir."""
    @contextlib.contextmanager
    def materialize():
        with tempfile.TemporaryDirectory(prefix=f"leanlm-serve-gen{generation}-") as tmp:
            lineage.restore_model(run, lineage.records(run), generation, Path(tmp) / "model")
            yield Path(tmp) / "model"
    return materialize


def version_of(run: Path, name: str, rec: dict) -> Version:
    g = rec["generation"]
    d = lineage.gen_dir(run, g)
    materialize = None
    if (d / "model").is_dir() or rec.get("model_source"):
        source = lineage.model_path(run, rec)
    elif (d / "model.delta").exists():
        source, materialize = str(d / "model.delta"), _restorer(run, g)
    else:
        raise lineage.RunDirError(f"{d}: generation {g} was accepted but holds no model (model/ or model.delta)")
    return Version(id=f"{name}@gen-{g}", tag=f"gen-{g}", source=source, generation=g, parent=rec.get("parent"),
                   metrics={k: rec.get("metrics", {}).get(k) for k in GATE_KEYS}, materialize=materialize)


class Follower:
    """Reads the run's lineage; registers accepted generations, blocks rolled-back ones, installs the newest."""

    def __init__(self, run: str | Path, registry: Registry, poll_s: float = 2.0):
        self.run, self.registry, self.poll_s = Path(run), registry, poll_s
        self.seen = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def poll(self, reason: str = "follow: accepted by the evolve gate") -> dict | None:
        recs = lineage.records(self.run)
        new = [r for r in recs if r["generation"] > self.seen]
        newest = None
        for r in new:
            if r["accepted"]:
                newest = version_of(self.run, self.registry.name, r)
                self.registry.add(newest)
            else:
                self.registry.block(f"gen-{r['generation']}", "rolled back by the evolve gate")
        if new:
            self.seen = new[-1]["generation"]
        if newest is not None:
            return self.registry.install(self.registry.versions.get(newest.tag, newest), f"{reason} "
                                         f"(generation {newest.generation}, parent {newest.parent})")
        return None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leanlm-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except (OSError, ValueError, KeyError, RuntimeError) as e:   # a half-written or odd run: retry later
                self.errors += 1
                log.warning("follow %s: %s: %s (retrying in %.0f s)", self.run, type(e).__name__, e, self.poll_s)
