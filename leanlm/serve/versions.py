"""Immutable, addressable model versions; the ledger; swap, canary, promote and rollback.

A version is one set of weights that never changes: ``NAME@gen-3`` (generation 3 of an evolve run) or
``NAME@base`` (a plain spec). ``NAME`` alone means the current version, or the canary for the share of
users the canary takes. A swap only moves the ``current`` pointer (under a lock): requests in flight hold
their version object, finish on it, and the old weights are freed when the last of them ends. Every change
is appended to the ledger, with the reason and the generation's gate metrics and parent.
"""
from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .protocol import APIError

log = logging.getLogger(__name__)
GATE_KEYS = ("headline", "score", "retention", "ppl", "refusal_rate")


@dataclass(eq=False)
class Version:
    id: str                                   # NAME@tag, what responses name
    tag: str                                  # gen-3 | base
    source: str                               # what the backend loader is given (a spec or a directory)
    generation: int | None = None
    parent: int | None = None
    metrics: dict = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    materialize: Callable[[], Any] | None = None   # for a generation stored as a delta: () -> context manager
    backend: Any = None
    inflight: int = 0
    retired: bool = False
    last_used: float = 0.0
    load_lock: threading.Lock = field(default_factory=threading.Lock)


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, and RSS creeps across swaps)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):          # not glibc: nothing to trim
        pass


def _lower_priority(nice: int) -> None:
    """Lower the calling thread (and threads it starts) by ``nice`` below the priority it started with, at most
    to 19 (Linux: niceness is per thread), so a server that is itself niced still loads below its decode loop."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError as e:                      # not permitted here: load at normal priority
        log.warning("could not lower the loader thread's priority: %s", e)


class Ledger:
    """Append-only record of when each version went live and why (JSONL on disk when given a path)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.entries: list[dict] = []
        self._lock = threading.Lock()

    def record(self, event: str, version: Version | None, reason: str, **extra) -> dict:
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "event": event,
                 "version": version.id if version else None, "reason": reason, **extra}
        if version is not None:
            entry.update(parent=version.parent, gate=version.metrics)
        with self._lock:
            self.entries.append(entry)
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a") as f:
                    f.write(json.dumps(entry, sort_keys=True) + "\n")
        log.info("ledger: %s %s (%s)", event, entry["version"], reason)
        return entry


def canary_bucket(user: str | None) -> float:
    """A number in [0, 1) fixed per user (sticky routing); a request without ``user`` draws one."""
    if not user:
        return random.random()
    return int(hashlib.sha256(user.encode()).hexdigest()[:12], 16) / float(1 << 48)


class Registry:
    def __init__(self, name: str, load_backend: Callable[[str], Any], canary: float = 0.0, max_loaded: int = 3,
                 ledger: Ledger | None = None, load_nice: int = 0):
        if "@" in name:
            raise ValueError(f"model name '{name}' must not contain '@' (it separates the version)")
        self.name, self.load_backend, self.canary_share, self.max_loaded = name, load_backend, canary, max_loaded
        self.ledger = ledger or Ledger()
        self.versions: dict[str, Version] = {}
        self.blocked: dict[str, str] = {}             # tag -> why it is never served
        self.current: Version | None = None
        self.canary: Version | None = None
        self.history: list[Version] = []              # versions that were current, oldest first
        self.swaps = 0
        self._lock = threading.RLock()
        # Loads run on one thread of their own, at a lower CPU priority than the scheduler's decode loop: on a
        # CPU a load at equal priority slows every in-flight step ~3x (it competes for cores and the GIL).
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="leanlm-load", initializer=_lower_priority,
                                          initargs=(load_nice,))

    # ------------------------------------------------------------------ catalogue
    def add(self, v: Version) -> None:
        with self._lock:
            self.versions.setdefault(v.tag, v)

    def block(self, tag: str, reason: str) -> None:
        with self._lock:
            self.blocked[tag] = reason
            self.versions.pop(tag, None)
        self.ledger.record("blocked", None, reason, tag=tag)

    def _lookup(self, tag: str) -> Version:
        if tag in self.blocked:
            raise APIError(404, f"version {self.name}@{tag} is not served: {self.blocked[tag]}",
                           param="model", code="model_not_found")
        if tag not in self.versions:
            known = ", ".join(f"{self.name}@{t}" for t in self.versions) or "none yet"
            raise APIError(404, f"the model {self.name}@{tag} does not exist; versions: {known}",
                           param="model", code="model_not_found")
        return self.versions[tag]

    def parse(self, model: str) -> str | None:
        """The tag a ``model`` field asks for (None: the routed current version)."""
        name, _, tag = model.partition("@")
        if name != self.name:
            raise APIError(404, f"the model '{model}' does not exist; this server serves '{self.name}' "
                                f"(and '{self.name}@<version>')", param="model", code="model_not_found")
        if "@" in model and not tag:
            raise APIError(400, f"'{model}' names no version after '@'", param="model")
        return tag or None

    # ------------------------------------------------------------------ serving
    def route(self, model: str, user: str | None = None) -> Version:
        """The version that serves this request, loaded and pinned (call ``release`` when it ends)."""
        tag = self.parse(model)
        with self._lock:
            if tag is not None:
                v = self._lookup(tag)
            elif self.canary is not None and canary_bucket(user) < self.canary_share:
                v = self.canary
            elif self.current is not None:
                v = self.current
            else:
                raise APIError(503, f"no version of '{self.name}' is live yet", type_="server_error",
                               code="no_version")
            v.inflight += 1
            v.last_used = time.monotonic()
        try:
            self._ensure_loaded(v)
        except Exception:
            self.release(v)
            raise
        return v

    def release(self, v: Version) -> None:
        with self._lock:
            v.inflight -= 1
            doomed = self._collect()
        self._free(doomed)

    def _ensure_loaded(self, v: Version) -> None:
        with v.load_lock:
            if v.backend is not None:
                return
            t0 = time.perf_counter()
            backend = self._loader.submit(self._load, v).result()
            with self._lock:
                v.backend, v.retired = backend, False
                doomed = self._collect()
            log.info("loaded %s from %s in %.1f s", v.id, v.source, time.perf_counter() - t0)
        self._free(doomed)

    def _load(self, v: Version) -> Any:
        if v.materialize is not None:               # a generation stored as a delta: rebuild it, load, clean up
            with v.materialize() as path:
                return self.load_backend(str(path))
        return self.load_backend(v.source)

    def _collect(self) -> list[tuple[Version, Any]]:
        """Idle versions to free: retired ones at once, pinned ones beyond ``max_loaded`` oldest first."""
        active = {id(self.current), id(self.canary)}
        idle = [v for v in self.versions.values() if v.backend is not None and v.inflight == 0
                and id(v) not in active]
        idle += [v for v in self.history if v.backend is not None and v.inflight == 0 and id(v) not in active
                 and v not in idle]
        doomed = [v for v in idle if v.retired]
        keep = sorted((v for v in idle if not v.retired), key=lambda v: v.last_used)
        busy = {id(v): v for v in [*self.versions.values(), *self.history]
                if v.backend is not None and v.inflight > 0 and id(v) not in active}
        loaded = sum(1 for v in (self.current, self.canary) if v is not None) + len(busy) + len(keep)
        while keep and loaded > self.max_loaded:
            doomed.append(keep.pop(0))
            loaded -= 1
        out = [(v, v.backend) for v in doomed]
        for v in doomed:
            v.backend = None
        return out

    @staticmethod
    def _free(doomed: list[tuple[Version, Any]]) -> None:
        """Close backends taken out of service by ``_collect`` (outside the lock: closing takes time)."""
        for v, backend in doomed:
            backend.close()
            log.info("freed %s", v.id)
        if doomed:
            gc.collect()
            _trim_heap()

    # ------------------------------------------------------------------ changing what is live
    def install(self, v: Version, reason: str) -> dict:
        """Load ``v`` (outside the lock; requests keep flowing), then make it current or the canary."""
        self.add(v)
        with self._lock:
            v.inflight += 1                           # pinned while loading so it cannot be collected
        try:
            self._ensure_loaded(v)
        finally:
            with self._lock:
                v.inflight -= 1
        with self._lock:
            if v.tag in self.blocked:
                return self.ledger.record("skipped", v, f"blocked while loading: {self.blocked[v.tag]}")
            if self.canary_share > 0 and self.current is not None:
                if self.canary is not None:
                    self.canary.retired = True
                self.canary = v
                entry = self.ledger.record("canary", v, reason, share=self.canary_share)
            else:
                entry = self._make_current(v, reason)
            doomed = self._collect()
        self._free(doomed)
        return entry

    def _make_current(self, v: Version, reason: str, event: str = "live") -> dict:
        old = self.current
        if old is not None and old is not v:
            old.retired = True
        self.current = v
        if self.canary is v:
            self.canary = None
        self.history.append(v)
        self.swaps += 1
        return self.ledger.record(event, v, reason, previous=old.id if old else None)

    def promote(self, tag: str | None = None) -> dict:
        with self._lock:
            v = self._lookup(tag) if tag else self.canary
            if v is None:
                raise APIError(409, "there is no canary to promote; name a version", code="nothing_to_promote")
            v.inflight += 1
        try:
            self._ensure_loaded(v)
            with self._lock:
                entry = self._make_current(v, "admin promote", event="promote")
                doomed = self._collect()
        finally:
            self.release(v)
        self._free(doomed)
        return entry

    def rollback(self, tag: str | None = None) -> dict:
        """Withdraw the canary (or the named version, or else the current one) and never serve it again;
        withdrawing the current version makes the one before it current."""
        with self._lock:
            target = self._lookup(tag) if tag else (self.canary or self.current)
            if target is None:
                raise APIError(409, "nothing is live to roll back", code="nothing_to_roll_back")
            previous = None
            if target is self.current:
                previous = next((h for h in reversed(self.history)
                                 if h is not target and h.tag in self.versions), None)
                if previous is None:
                    raise APIError(409, f"{target.id} has no earlier version to roll back to",
                                   code="nothing_to_roll_back")
                previous.inflight += 1
            if target is self.canary:
                self.canary = None
            target.retired = True
            self.blocked[target.tag] = "rolled back by an admin"
            self.versions.pop(target.tag, None)
        entry = self.ledger.record("rollback", target, "admin rollback")
        if previous is not None:
            try:
                self._ensure_loaded(previous)
                with self._lock:
                    self._make_current(previous, f"rollback of {target.id}", event="rollback-to")
            finally:
                self.release(previous)
        with self._lock:
            doomed = self._collect()
        self._free(doomed)
        return entry

    # ------------------------------------------------------------------ views
    def listing(self) -> list[Version]:
        with self._lock:
            return list(self.versions.values())

    def snapshot(self) -> dict:
        with self._lock:
            return {"name": self.name, "current": self.current.id if self.current else None,
                    "canary": self.canary.id if self.canary else None, "canary_share": self.canary_share,
                    "loaded": [v.id for v in {id(v): v for v in [*self.versions.values(), *self.history]}.values()
                               if v.backend is not None],
                    "versions": [v.id for v in self.versions.values()], "blocked": dict(self.blocked),
                    "swaps": self.swaps}
