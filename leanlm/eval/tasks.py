"""Verifiable task families: each a seeded generator of problems at a difficulty level, plus an exact checker.

Seed spaces. A problem is fully determined by (split, family, difficulty, index): its RNG is seeded with
the string ``"{split}/{family}/{difficulty}/{index}"``. Evaluation uses ``split="heldout"`` (with its own
phrasings); training-data generators must use ``split="train"`` (or any other split name), so held-out
problems come from a seed space and phrasing that training never touches. ``problem_set`` deduplicates,
and ``disjoint`` lets a trainer drop any accidental collision with held-out prompts.

A third split, ``SHIFTED`` (``leanlm.eval.shifted``), draws from a distribution the training generator
never produces: operands of different lengths, carries in every column, six or more unseen wordings
(numbers in words, word problems, thousands separators). The ``addmix`` family trains the general skill
(addition of any operand lengths up to the difficulty), not one fixed operand length.

Every problem is scored two ways: ``check`` (lenient: ``leanlm.eval.extract``'s extractor, as before) and
``check_strict`` (the reply must *be* the answer: the first number of the reply, nothing contradicting it;
see ``extract.strict_int``).

Training phrasings are many paraphrases (nine per arithmetic family), the held-out ones are others. With
one to three training wordings a fine-tuned model learnt the wording, not the task: SmolLM2 sorted 52% of
train-phrased lists and 2.5% of held-out ones after five generations (``benchmarks/EVOLVE.md``).
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from typing import Callable

from . import shifted
from .extract import extract_int, extract_int_list, extract_text, strict_int, strict_int_list, strict_text

HELDOUT = "heldout"
TRAIN = "train"
SHIFTED = "shifted"
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
    strict: Callable[[str, str], bool]                         # the same, strict (the reply is the answer)
    shift: Callable[[random.Random, int], tuple[dict, str]] | None = None   # the SHIFTED distribution
    difficulties: tuple[int, ...] = field(default=(1, 2, 3, 4))

    def generate(self, rng: random.Random, difficulty: int, split: str = TRAIN, index: int = 0) -> Problem:
        make = self.shift if split == SHIFTED and self.shift else self.make
        fields, answer = make(rng, difficulty)
        phrasings = self.templates.get(split, self.templates[TRAIN])
        question = rng.choice(phrasings).format(**fields)
        # fields starting with "_" are renderings (words, separators) of the operands, not operands
        key = f"{self.name}:{difficulty}:" + "|".join(f"{k}={fields[k]}" for k in sorted(fields) if k[0] != "_")
        return Problem(self.name, difficulty, question, answer, split, index, key)


def _ndigit(rng: random.Random, d: int) -> int:
    return rng.randint(10 ** (d - 1) if d > 1 else 0, 10 ** d - 1)


def _check_int(output: str, answer: str) -> bool:
    return extract_int(output) == int(answer)


def _check_text(output: str, answer: str) -> bool:
    return extract_text(output) == answer


def _check_list(output: str, answer: str) -> bool:
    return extract_int_list(output) == [int(x) for x in answer.split(",")]


def _strict_int(output: str, answer: str) -> bool:
    return strict_int(output) == int(answer)


def _strict_text(output: str, answer: str) -> bool:
    return strict_text(output) == answer


def _strict_list(output: str, answer: str) -> bool:
    return strict_int_list(output) == [int(x) for x in answer.split(",")]


def _binary(op: str, fn: Callable[[int, int], int], ordered: bool = False):
    def make(rng: random.Random, d: int) -> tuple[dict, str]:
        a, b = _ndigit(rng, d), _ndigit(rng, d)
        if ordered and b > a:
            a, b = b, a
        return {"a": a, "b": b, "op": op}, str(fn(a, b))
    return make


def _binary_shifted(op: str, fn: Callable[[int, int], int], ordered: bool = False):
    def make(rng: random.Random, d: int) -> tuple[dict, str]:
        f = shifted.binary_fields(rng, d, op, carry=op == "+", ordered=ordered)
        return f, str(fn(f["a"], f["b"]))
    return make


def _binary_mixed(op: str, fn: Callable[[int, int], int]):
    def make(rng: random.Random, d: int) -> tuple[dict, str]:
        a, b = shifted.mixed_pair(rng, d)
        return {"a": a, "b": b, "op": op}, str(fn(a, b))
    return make


def _sort_shifted(rng: random.Random, d: int) -> tuple[dict, str]:
    f, nums = shifted.sort_fields(rng, d)
    return f, ",".join(map(str, nums))


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


def _arith_templates(word: str, sym: str, family: str) -> dict[str, tuple[str, ...]]:
    return {
        SHIFTED: shifted.arith_templates(family),
        TRAIN: (f"What is {{a}} {sym} {{b}}?", f"Compute {{a}} {sym} {{b}}.", f"{word} {{a}} and {{b}}.",
                f"Work out {{a}} {sym} {{b}}.", f"Find the value of {{a}} {sym} {{b}}.", f"{{a}} {sym} {{b}} = ?",
                f"Evaluate {{a}} {sym} {{b}}.", f"Please solve {{a}} {sym} {{b}}.", f"How much is {{a}} {sym} {{b}}?"),
        HELDOUT: (f"Calculate {{a}} {sym} {{b}}.", f"What does {{a}} {sym} {{b}} equal?"),
    }


_add, _sub, _mul = (lambda a, b: a + b), (lambda a, b: a - b), (lambda a, b: a * b)
FAMILIES: dict[str, TaskFamily] = {
    "add": TaskFamily("add", _binary("+", _add), _arith_templates("Add", "+", "add"), _check_int, _strict_int,
                      _binary_shifted("+", _add)),
    # the general skill: operands of any lengths 1..d (the generator's target; "add" keeps equal lengths)
    "addmix": TaskFamily("addmix", _binary_mixed("+", _add), _arith_templates("Add", "+", "add"), _check_int,
                         _strict_int, _binary_shifted("+", _add)),
    "sub": TaskFamily("sub", _binary("-", _sub, ordered=True),
                      _arith_templates("Subtract the second from the first:", "-", "sub"), _check_int, _strict_int,
                      _binary_shifted("-", _sub, ordered=True)),
    "mul": TaskFamily("mul", _binary("*", _mul), _arith_templates("Multiply", "*", "mul"), _check_int, _strict_int,
                      _binary_shifted("*", _mul)),
    "reverse": TaskFamily("reverse", _reverse, {
        TRAIN: ("Reverse the string '{s}'.", "Write '{s}' backwards.", "Reverse the letters of '{s}'.",
                "Write the string '{s}' from its last letter to its first."),
        HELDOUT: ("What is the string '{s}' reversed?", "Spell '{s}' in reverse order."),
        SHIFTED: shifted.REVERSE_TEMPLATES,
    }, _check_text, _strict_text, lambda rng, d: shifted.reverse_fields(rng, d)),
    "sort": TaskFamily("sort", _sort, {
        TRAIN: ("Sort these numbers in ascending order: {xs}.", "Put these numbers in increasing order: {xs}.",
                "List {xs} from lowest to highest.", "Order the numbers {xs} from least to greatest."),
        HELDOUT: ("Arrange from smallest to largest: {xs}.",),
        SHIFTED: shifted.SORT_TEMPLATES,
    }, _check_list, _strict_list, _sort_shifted),
    "pyexpr": TaskFamily("pyexpr", _pyexpr, {
        TRAIN: ("Evaluate the Python expression {e}.", "Compute the Python expression {e}.",
                "In Python, what is {e}?"),
        HELDOUT: ("What is the value of the Python expression {e}?",),
        SHIFTED: shifted.PYEXPR_TEMPLATES,
    }, _check_int, _strict_int, _pyexpr),
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
    """Lenient: the answer found anywhere the extractor looks (``extract.extract_int`` and friends)."""
    return FAMILIES[p.family].check(output, p.answer)


def check_strict(p: Problem, output: str) -> bool:
    """Strict: the reply is the answer in the expected format (``extract.strict_int`` and friends)."""
    return FAMILIES[p.family].strict(output, p.answer)
