"""The evaluation protocol, in one config. Every eval result embeds it."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import require
from .tasks import parse_skill

DEFAULT_TASKS = ("add:1", "add:2", "add:3", "sub:2", "mul:1", "reverse:3", "pyexpr:1")


@dataclass(frozen=True)
class EvalConfig:
    corpus: str | None = field(default=None, metadata={"help": "UTF-8 text file (default: CPython pydoc topics)"})
    context: int = field(default=512, metadata={"help": "perplexity window length in tokens"})
    stride: int = field(default=512, metadata={"help": "perplexity window stride in tokens"})
    max_tokens: int = field(default=8192, metadata={"help": "tokens of the corpus eval split scored"})
    ppl_batch: int = field(default=4, metadata={"help": "windows per forward pass"})
    tasks: tuple[str, ...] = field(default=DEFAULT_TASKS, metadata={"help": "skills as family:difficulty"})
    n: int = field(default=40, metadata={"help": "held-out problems per task"})
    gen_batch: int = field(default=16, metadata={"help": "prompts per generation batch"})
    max_new_tokens: int = field(default=24, metadata={"help": "generation budget per answer"})
    speed: bool = field(default=True, metadata={"help": "measure prefill/decode speed"})
    speed_repeats: int = field(default=3, metadata={"help": "timed repeats (median reported)"})
    perplexity: bool = field(default=True, metadata={"help": "measure perplexity"})
    progress: bool = field(default=True, metadata={"help": "progress bars"})

    def __post_init__(self) -> None:
        require(self.context >= 2, "context must be >= 2")
        require(0 < self.stride <= self.context, "stride must be in (0, context]")
        require(self.max_tokens >= 2, "max_tokens must be >= 2")
        require(self.n >= 0 and self.gen_batch >= 1 and self.max_new_tokens >= 1, "n, gen_batch, max_new_tokens")
        for t in self.tasks:
            parse_skill(t)
