"""Verifiable task families: each a seeded generator of problems at a difficulty level, plus an exact checker.

Seed spaces. A problem is fully determined by (split, family, difficulty, index): its RNG is seeded with
the string ``"{split}/{family}/{difficulty}/{index}"``. Evaluation uses ``split="heldout"`` (with its own
phrasings); training-data generators must use ``split="train"`` (or any other split name), so held-out
problems come from a seed space and phrasing that training never touches. ``problem_set`` deduplicates,
and ``disjoint`` lets a trainer drop any accidental collision with held-out prompts.

Training phrasings are many paraphrases (nine per arithmetic family), the held-out ones are others. With
one to three training wordings a fine-tuned model learnt the wording, not the task: SmolLM2 sorted 52% of
train-phrased lists and 2.5% of held-out ones after five generations (``benchmarks/EVOLVE.md``).
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from typing import Callable

from .extract import extract_int, extract_int_list, extract_text

HELDOUT = "heldout"
TRAIN = "train"
SUFFIX = " Reply with only the answer."


@dataclass(frozen=True)
class Problem:
    family: str
    difficulty: int
    question: str          # the task itself, without the answer-format suffix
    answer: str            # canonical answer text
    split: str = TRAIN
    index: int = 0
    key: str = ""          # canonical operands, independent of phrasing (for de-duplication)

    @property
    def prompt(self) -> str:
        return self.question + SUFFIX

    @property
    def skill(self) -> str:
        return f"{self.family}:{self.difficulty}"


@dataclass(frozen=True)
class TaskFamily:
    name: str
    make: Callable[[random.Random, int], tuple[dict, str]]   # (template fields, answer) at a difficulty
    templates: dict[str, tuple[str, ...]]                     # split -> phrasings ("train" is the default)
    check: Callable[[str, str], bool]                          # (model output, answer) -> correct?
    difficulties: tuple[int, ...] = field(default=(1, 2, 3, 4))

    def generate(self, rng: random.Random, difficulty: int, split: str = TRAIN, index: int = 0) -> Problem:
        fields, answer = self.make(rng, difficulty)
        phrasings = self.templates.get(split, self.templates[TRAIN])
        question = rng.choice(phrasings).format(**fields)
        key = f"{self.name}:{difficulty}:" + "|".join(f"{k}={fields[k]}" for k in sorted(fields))
        return Problem(self.name, difficulty, question, answer, split, index, key)


def _ndigit(rng: random.Random, d: int) -> int:
    return rng.randint(10 ** (d - 1) if d > 1 else 0, 10 ** d - 1)


def _check_int(output: str, answer: str) -> bool:
    return extract_int(output) == int(answer)


def _check_text(output: str, answer: str) -> bool:
    return extract_text(output) == answer


def _check_list(output: str, answer: str) -> bool:
    return extract_int_list(output) == [int(x) for x in answer.split(",")]


def _binary(op: str, fn: Callable[[int, int], int], ordered: bool = False):
    def make(rng: random.Random, d: int) -> tuple[dict, str]:
        a, b = _ndigit(rng, d), _ndigit(rng, d)
        if ordered and b > a:
            a, b = b, a
        return {"a": a, "b": b, "op": op}, str(fn(a, b))
    return make


def _reverse(rng: random.Random, d: int) -> tuple[dict, str]:
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(d + 2))
    return {"s": word}, word[::-1]


def _sort(rng: random.Random, d: int) -> tuple[dict, str]:
    nums = [rng.randint(0, 99) for _ in range(d + 2)]
    return {"xs": ", ".join(map(str, nums))}, ",".join(map(str, sorted(nums)))


def _pyexpr(rng: random.Random, d: int) -> tuple[dict, str]:
    expr = str(rng.randint(1, 9))
    for _ in range(d):
        op, n = rng.choice("+-*"), rng.randint(1, 9)
        expr = f"({expr}) {op} {n}" if op == "*" and rng.random() < 0.5 else f"{expr} {op} {n}"
    return {"e": expr}, str(eval(expr, {"__builtins__": {}}))  # noqa: S307 - our own digits and operators


def _arith_templates(word: str, sym: str) -> dict[str, tuple[str, ...]]:
    return {
        TRAIN: (f"What is {{a}} {sym} {{b}}?", f"Compute {{a}} {sym} {{b}}.", f"{word} {{a}} and {{b}}.",
                f"Work out {{a}} {sym} {{b}}.", f"Find the value of {{a}} {sym} {{b}}.", f"{{a}} {sym} {{b}} = ?",
                f"Evaluate {{a}} {sym} {{b}}.", f"Please solve {{a}} {sym} {{b}}.", f"How much is {{a}} {sym} {{b}}?"),
        HELDOUT: (f"Calculate {{a}} {sym} {{b}}.", f"What does {{a}} {sym} {{b}} equal?"),
    }


FAMILIES: dict[str, TaskFamily] = {
    "add": TaskFamily("add", _binary("+", lambda a, b: a + b), _arith_templates("Add", "+"), _check_int),
    "sub": TaskFamily("sub", _binary("-", lambda a, b: a - b, ordered=True),
                      _arith_templates("Subtract the second from the first:", "-"), _check_int),
    "mul": TaskFamily("mul", _binary("*", lambda a, b: a * b), _arith_templates("Multiply", "*"), _check_int),
    "reverse": TaskFamily("reverse", _reverse, {
        TRAIN: ("Reverse the string '{s}'.", "Write '{s}' backwards.", "Reverse the letters of '{s}'.",
                "Write the string '{s}' from its last letter to its first."),
        HELDOUT: ("What is the string '{s}' reversed?", "Spell '{s}' in reverse order."),
    }, _check_text),
    "sort": TaskFamily("sort", _sort, {
        TRAIN: ("Sort these numbers in ascending order: {xs}.", "Put these numbers in increasing order: {xs}.",
                "List {xs} from lowest to highest.", "Order the numbers {xs} from least to greatest."),
        HELDOUT: ("Arrange from smallest to largest: {xs}.",),
    }, _check_list),
    "pyexpr": TaskFamily("pyexpr", _pyexpr, {
        TRAIN: ("Evaluate the Python expression {e}.", "Compute the Python expression {e}.",
                "In Python, what is {e}?"),
        HELDOUT: ("What is the value of the Python expression {e}?",),
    }, _check_int),
}


def parse_skill(skill: str) -> tuple[str, int]:
    """'add:2' -> ('add', 2), with a clear error on anything else."""
    name, _, level = skill.partition(":")
    if name not in FAMILIES:
        raise ValueError(f"unknown task family '{name}'; choose from {sorted(FAMILIES)}")
    if not level.isdigit() or int(level) < 1:
        raise ValueError(f"task '{skill}' needs a positive difficulty, e.g. '{name}:2'")
    return name, int(level)


def problem(family: str, difficulty: int, split: str, index: int) -> Problem:
    rng = random.Random(f"{split}/{family}/{difficulty}/{index}")
    return FAMILIES[family].generate(rng, difficulty, split, index)


def problem_set(family: str, difficulty: int, n: int, split: str = HELDOUT, start: int = 0) -> list[Problem]:
    """``n`` distinct problems (by operands) from one seed space, deterministic."""
    out, seen, i = [], set(), start
    while len(out) < n:
        if i - start > 50 * n + 100:
            raise ValueError(f"{family}:{difficulty} has fewer than {n} distinct problems")
        p = problem(family, difficulty, split, i)
        if p.key not in seen:
            seen.add(p.key)
            out.append(p)
        i += 1
    return out


def disjoint(train: list[Problem], heldout: list[Problem]) -> list[Problem]:
    """Training problems whose operands (``Problem.key``, phrasing aside) never appear in ``heldout``."""
    banned = {p.key for p in heldout}
    return [p for p in train if p.key not in banned]


def check(p: Problem, output: str) -> bool:
    return FAMILIES[p.family].check(output, p.answer)
