"""``ServeConfig``: every limit and switch of the server, frozen and JSON-round-tripping."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import require


def _f(default, help_: str):
    return field(default=default, metadata={"help": help_})


@dataclass(frozen=True)
class ServeConfig:
    host: str = _f("127.0.0.1", "address to bind (loopback by default; 0.0.0.0 exposes the server)")
    port: int = _f(8000, "TCP port (0 = any free port)")
    api_key: str | None = _f(None, "bearer token required on every route but /health")
    backend: str = _f("torch", "torch (any leanlm spec) or llama_cpp (the model's GGUF)")
    dtype: str = _f("fp32", "compute dtype of the torch backend (fp32: on CPU, batched decode in bf16 measured "
                            "2-3x slower than fp32; see benchmarks/SERVE.md)")
    threads: int = _f(0, "torch threads of the scheduler (0 = leave torch's default)")
    follow: bool = _f(False, "watch an evolve run directory and swap in each accepted generation")
    poll_s: float = _f(2.0, "seconds between looks at the run directory (--follow)")
    canary: float = _f(0.0, "share of traffic (sticky per `user`) sent to a new generation before promotion")
    max_batch: int = _f(16, "sequences decoded together in one step")
    prefix_cache: int = _f(4, "prompt prefixes (shared with the previous prompt, >= 16 tokens: a chat template's "
                              "system preamble) whose keys and values the torch backend keeps; 0 = off")
    skinny: bool = _f(True, "torch backend, fp32: batched decode steps' matrix products through leanlm's AVX2 "
                            "kernel (serve/backends/skinny.c; ~1.6x PyTorch's BLAS at 2-16 rows on one core); "
                            "off = PyTorch's")
    max_prefill_tokens: int = _f(256, "prompt tokens prefilled per step at most (bounds the pause a burst of "
                                      "arrivals puts on running requests; one request always fits)")
    max_queue: int = _f(64, "requests waiting for a slot; more get HTTP 429")
    max_prompt_tokens: int = _f(1024, "longest prompt accepted, in tokens")
    max_tokens_limit: int = _f(512, "largest max_tokens accepted")
    default_max_tokens: int = _f(64, "max_tokens when a request gives none")
    max_n: int = _f(8, "largest n (choices per request) accepted")
    max_body_bytes: int = _f(1 << 20, "largest request body accepted, in bytes")
    max_loaded: int = _f(3, "versions held in memory at once (current, canary, pinned @gen-K)")
    load_nice: int = _f(10, "nice increment of the thread that loads new versions over the server's own "
                            "(0 = same priority as decoding): a swap then takes idle cores, not the decode "
                            "loop's (Linux; see SERVE.md)")
    ledger: str | None = _f(None, "JSONL file recording every version change (default RUN/serve-ledger.jsonl "
                                  "for a run)")
    name: str | None = _f(None, "model name clients use (default: the run directory's or spec's name)")

    def __post_init__(self) -> None:
        require(0 <= self.port < 65536, f"port {self.port} is not a TCP port")
        require(0.0 <= self.canary < 1.0, f"canary {self.canary} must be in [0, 1)")
        require(self.poll_s > 0, "poll_s must be positive")
        for name in ("max_batch", "max_queue", "max_prefill_tokens", "max_prompt_tokens", "max_tokens_limit", "max_n",
                     "max_body_bytes", "max_loaded", "default_max_tokens"):
            require(getattr(self, name) > 0, f"{name} must be positive")
        require(self.prefix_cache >= 0, "prefix_cache must be >= 0")
        require(0 <= self.load_nice <= 19, f"load_nice {self.load_nice} must be in [0, 19]")
        require(self.default_max_tokens <= self.max_tokens_limit, "default_max_tokens exceeds max_tokens_limit")
        require(self.backend in ("torch", "llama_cpp"), f"unknown backend '{self.backend}'; choose torch or llama_cpp")
        require(self.api_key is None or len(self.api_key) >= 8, "api_key must be at least 8 characters")
