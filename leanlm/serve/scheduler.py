"""The batching scheduler: one thread owns every loaded model and decodes all running requests together.

Iteration-level (continuous) batching, as in Orca (Yu et al., OSDI 2022) and vLLM: at every step boundary
the requests that arrived are prefilled together and joined to the running batch of their version; finished
or cancelled rows leave the batch at once, so a new request never waits for a whole batch to drain. Each
version (a swapped-in generation, a canary) has its own batch; every iteration steps each batch once.
Handlers (the event loop) only call ``submit`` and read the events a request emits:

    ("delta", choice, text)  ("finish", choice, reason)  ("done", usage)  ("error", message)
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .sampling import sample

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """More requests are waiting than the queue holds."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class GenRequest:
    version: Any                        # versions.Version: .backend is loaded and pinned while in flight
    prompt: list[int]
    params: SamplingParams
    emit: Callable[[tuple], None]       # called from the scheduler thread; must not block
    n: int = 1
    cancelled: threading.Event = field(default_factory=threading.Event)
    completion_tokens: int = 0
    open_choices: int = 0

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class _Seq:                             # one choice of one request: one row of a batch
    req: GenRequest
    index: int
    generator: torch.Generator
    ids: list[int] = field(default_factory=list)
    sent: str = ""
    done: bool = False


@dataclass
class _Batch:
    version: Any
    state: Any
    seqs: list[_Seq]


def _generator(seed: int | None, choice: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed + choice) if seed is not None else random.getrandbits(63))
    return g


class Scheduler:
    def __init__(self, max_batch: int = 16, max_queue: int = 64, on_release: Callable[[Any], None] | None = None,
                 threads: int = 0, max_prefill_tokens: int = 256):
        self.max_batch, self.max_queue, self.threads = max_batch, max_queue, threads
        self.max_prefill_tokens = max_prefill_tokens
        self.on_release = on_release or (lambda version: None)
        self._waiting: deque[GenRequest] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._batches: dict[int, _Batch] = {}          # id(version) -> its running batch
        self._thread: threading.Thread | None = None
        self.steps = 0
        # work done, for /metrics: decode = tokens from step(), prefill = prompt tokens, with seconds spent
        self.counts = {"decode_tokens": 0, "decode_seconds": 0.0, "prefill_tokens": 0, "prefill_seconds": 0.0}

    # ------------------------------------------------------------------ called from any thread
    def submit(self, req: GenRequest) -> None:
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (the queue holds "
                                f"{self.max_queue}); retry later")
            self._waiting.append(req)
        self._wake.set()

    def stats(self) -> dict:
        with self._lock:
            waiting = len(self._waiting)
        batches = list(self._batches.values())
        return {"waiting": waiting, "running": sum(len(b.seqs) for b in batches), "batches": len(batches),
                "steps": self.steps}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="leanlm-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the scheduler thread
    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        while not self._stop.is_set():
            self._admit()
            if not self._batches:
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            for key in list(self._batches):
                self._step(key)
            self.steps += 1
        for batch in list(self._batches.values()):            # shutting down: end what is in flight
            for s in batch.seqs:
                self._close(s, None, error="the server is shutting down")

    def _rows(self, version) -> int:
        b = self._batches.get(id(version))
        return len(b.seqs) if b else 0

    def _take(self) -> list[GenRequest]:
        """Waiting requests that fit in the free rows and this step's prefill budget, first come first served."""
        taken: list[GenRequest] = []
        free = self.max_batch - sum(len(b.seqs) for b in self._batches.values())
        budget = self.max_prefill_tokens
        per_version: dict[int, int] = {}
        with self._lock:
            while self._waiting and free > 0:
                r = self._waiting[0]
                if r.cancelled.is_set():
                    self._waiting.popleft()
                    self.on_release(r.version)
                    continue
                used = self._rows(r.version) + per_version.get(id(r.version), 0)
                if r.n > min(free, r.version.backend.max_batch - used) or (taken and len(r.prompt) > budget):
                    break
                budget -= len(r.prompt)
                taken.append(self._waiting.popleft())
                per_version[id(r.version)] = per_version.get(id(r.version), 0) + r.n
                free -= r.n
        return taken

    def _admit(self) -> None:
        groups: dict[int, list[GenRequest]] = {}
        for r in self._take():
            groups.setdefault(id(r.version), []).append(r)
        for reqs in groups.values():
            self._prefill(reqs)

    def _prefill(self, reqs: list[GenRequest]) -> None:
        version = reqs[0].version
        backend = version.backend
        for r in reqs:
            r.open_choices = r.n
        seqs = [_Seq(r, k, _generator(r.params.seed, k)) for r in reqs for k in range(r.n)]
        t0 = time.perf_counter()
        try:
            state, logits = backend.prefill([r.prompt for r in reqs])
            rows = [i for i, r in enumerate(reqs) for _ in range(r.n)]
            if len(rows) != len(reqs):                         # n choices share their prompt's prefill
                state, logits = backend.select(state, rows), logits[rows]
        except Exception as e:  # a failing model must fail its requests, not the scheduler thread
            log.exception("prefill failed on %s", version.id)
            for s in seqs:
                self._close(s, None, error=f"prefill failed: {type(e).__name__}: {e}")
            return
        self.counts["prefill_tokens"] += sum(len(r.prompt) for r in reqs)
        self.counts["prefill_seconds"] += time.perf_counter() - t0
        self._consume(backend, seqs, logits)
        batch = self._batches.get(id(version))
        if batch is None:
            self._batches[id(version)] = _Batch(version, state, seqs)
        else:
            batch.state = backend.join(batch.state, state)
            batch.seqs.extend(seqs)
        self._drop_done(id(version))

    def _step(self, key: int) -> None:
        batch = self._batches[key]
        for s in batch.seqs:
            if not s.done and s.req.cancelled.is_set():       # the client went away: free its row now
                self._close(s, None)
        self._drop_done(key)
        if key not in self._batches:
            return
        backend = batch.version.backend
        t0 = time.perf_counter()
        try:
            logits = backend.step(batch.state, [s.ids[-1] for s in batch.seqs])
        except Exception as e:  # fail this batch's requests; other versions keep serving
            log.exception("decode step failed on %s", batch.version.id)
            for s in batch.seqs:
                self._close(s, None, error=f"decode failed: {type(e).__name__}: {e}")
            del self._batches[key]
            return
        self.counts["decode_tokens"] += len(batch.seqs)
        self.counts["decode_seconds"] += time.perf_counter() - t0
        self._consume(backend, batch.seqs, logits)
        self._drop_done(key)

    def _drop_done(self, key: int) -> None:
        batch = self._batches[key]
        keep = [i for i, s in enumerate(batch.seqs) if not s.done]
        if not keep:
            del self._batches[key]
        elif len(keep) < len(batch.seqs):
            batch.state = batch.version.backend.select(batch.state, keep)
            batch.seqs = [batch.seqs[i] for i in keep]

    # ------------------------------------------------------------------ tokens to text
    def _consume(self, backend, seqs: list[_Seq], logits: torch.Tensor) -> None:
        tokens = sample(logits, [s.req.params.temperature for s in seqs], [s.req.params.top_p for s in seqs],
                        [s.generator for s in seqs])
        for s, t in zip(seqs, tokens):
            if not s.done:
                self._advance(backend, s, t)

    def _advance(self, backend, s: _Seq, token: int) -> None:
        p, text_codec = s.req.params, backend.text
        if token in text_codec.eos_ids:
            return self._close(s, "stop", text_codec.decode(s.ids))
        s.ids.append(token)
        s.req.completion_tokens += 1
        text = text_codec.decode(s.ids)
        hits = [text.find(x) for x in p.stop if x in text]
        if hits:
            return self._close(s, "stop", text[:min(hits)])
        if len(s.ids) >= p.max_tokens or len(s.req.prompt) + len(s.ids) >= backend.context:
            return self._close(s, "length", text)
        hold = max((len(x) for x in p.stop), default=1) - 1      # a stop string may be forming at the end
        self._send(s, (text[:len(text) - hold] if hold else text).rstrip("\ufffd"))

    def _send(self, s: _Seq, visible: str) -> None:
        if len(visible) > len(s.sent) and visible.startswith(s.sent):
            s.req.emit(("delta", s.index, visible[len(s.sent):]))
            s.sent = visible

    def _close(self, s: _Seq, reason: str | None, text: str | None = None, error: str | None = None) -> None:
        """End one choice (reason None: cancelled or failed); the request ends with its last choice."""
        if s.done:
            return
        s.done = True
        if text is not None:
            self._send(s, text)
        if reason is not None:
            s.req.emit(("finish", s.index, reason))
        req = s.req
        req.open_choices -= 1
        if error is not None and not req.cancelled.is_set():
            req.cancel()                                   # one failed choice fails the request
            req.emit(("error", error))
        if req.open_choices == 0:
            if error is None:
                req.emit(("done", {"prompt_tokens": len(req.prompt), "completion_tokens": req.completion_tokens,
                                   "total_tokens": len(req.prompt) + req.completion_tokens}))
            self.on_release(req.version)


def wait_idle(scheduler: Scheduler, timeout: float = 10.0) -> bool:
    """True once nothing runs or waits (tests and the benchmark use it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = scheduler.stats()
        if st["running"] == 0 and st["waiting"] == 0:
            return True
        time.sleep(0.02)
    return False
