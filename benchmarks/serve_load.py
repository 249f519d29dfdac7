"""The load generator of ``benchmarks/serve.py``: concurrent streaming clients over loopback HTTP (httpx,
asyncio), each request timed chunk by chunk. Bounded: a fixed request count per phase and a deadline."""
from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

import httpx

TOPICS = ("the sea", "a lighthouse", "bread", "mountains", "a clock", "rain", "a library", "bees", "winter",
          "a train", "the moon", "coffee", "a garden", "maps", "snow", "a violin")


def prompt(i: int) -> str:
    return f"Write a short paragraph about {TOPICS[i % len(TOPICS)]}."


@dataclass
class Result:
    index: int
    start: float
    end: float = 0.0
    chunk_times: list[float] = field(default_factory=list)
    models: set[str] = field(default_factory=set)
    tokens: int = 0
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.start if self.chunk_times else None

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:])]


async def one(client: httpx.AsyncClient, url: str, model: str, i: int, max_tokens: int, headers: dict) -> Result:
    body = {"model": model, "messages": [{"role": "user", "content": prompt(i)}], "max_tokens": max_tokens,
            "temperature": 0.7, "seed": i, "stream": True, "stream_options": {"include_usage": True},
            "user": f"client-{i % 64}"}
    r = Result(i, time.perf_counter())
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as resp:
            if resp.status_code != 200:
                r.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return r
            async for line in resp.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("model"):
                    r.models.add(chunk["model"])
                if chunk.get("usage"):
                    r.tokens = chunk["usage"]["completion_tokens"]
                if "error" in chunk:
                    r.error = chunk["error"].get("message")
                for c in chunk.get("choices") or []:
                    if (c.get("delta") or {}).get("content"):
                        r.chunk_times.append(time.perf_counter())
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        r.error = f"{type(e).__name__}: {e}"
    r.end = time.perf_counter()
    return r


async def _phase(url: str, model: str, clients: int, requests: int, max_tokens: int, deadline_s: float,
                 headers: dict, on_done=None, first_index: int = 0) -> tuple[list[Result], float]:
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(first_index + i)
    results: list[Result] = []
    t_end = time.perf_counter() + deadline_s

    async def worker(client):
        while not queue.empty() and time.perf_counter() < t_end:
            res = await one(client, url, model, queue.get_nowait(), max_tokens, headers)
            results.append(res)
            if on_done is not None:
                on_done(len(results))

    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    return results, time.perf_counter() - t0


def run_phase(url: str, model: str, clients: int, requests: int, max_tokens: int, deadline_s: float = 600,
              headers: dict | None = None, on_done=None, first_index: int = 0) -> tuple[list[Result], float]:
    return asyncio.run(_phase(url, model, clients, requests, max_tokens, deadline_s, headers or {}, on_done,
                              first_index))


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def summarize(results: list[Result], wall: float) -> dict:
    ok = [r for r in results if r.error is None]
    tokens = sum(r.tokens or len(r.chunk_times) for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    gaps = [g for r in ok for g in r.gaps()]
    return {"requests": len(results), "failed": len(results) - len(ok), "wall_s": wall,
            "requests_per_s": len(ok) / wall, "tokens": tokens, "tokens_per_s": tokens / wall,
            "ttft_p50_s": _pct(ttfts, 0.5), "ttft_p95_s": _pct(ttfts, 0.95),
            "itl_p50_s": _pct(gaps, 0.5), "itl_p95_s": _pct(gaps, 0.95),
            "itl_max_s": max(gaps) if gaps else None,
            "latency_p50_s": statistics.median([r.end - r.start for r in ok]) if ok else None,
            "errors": sorted({r.error for r in results if r.error})[:5]}
