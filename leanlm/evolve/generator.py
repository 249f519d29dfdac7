"""Training problems for the chosen skills: seeded fresh problems, adversarial mutations of failures, and
problems the model proposes itself (kept only when the verifier can check them).

Training problems come from ``split="train"`` seed spaces (index ranges that move with the generation),
never from ``HELDOUT``, and ``disjoint`` drops any collision with the held-out set by operands.
"""
from __future__ import annotations

import ast
import operator
import random
import re

from ..eval.tasks import FAMILIES, HELDOUT, TRAIN, Problem, disjoint, parse_skill, problem_set

INDEX_STRIDE = 100_000   # generation g draws training indices from [g * stride, (g + 1) * stride)
ADVERSARIAL = "adversarial"
PROPOSED = "proposed"

_OPS = {"add": ("+", operator.add), "sub": ("-", operator.sub), "mul": ("*", operator.mul)}


def _key(family: str, difficulty: int, fields: dict) -> str:
    # the same operand key as leanlm.eval.tasks builds, so ``disjoint`` sees through phrasing
    return f"{family}:{difficulty}:" + "|".join(f"{k}={fields[k]}" for k in sorted(fields))


def _make(family: str, difficulty: int, fields: dict, answer: str, rng: random.Random, split: str,
          index: int) -> Problem:
    question = rng.choice(FAMILIES[family].templates[TRAIN]).format(**fields)
    return Problem(family, difficulty, question, answer, split, index, _key(family, difficulty, fields))


def fresh(skill: str, n: int, generation: int, heldout: list[Problem]) -> list[Problem]:
    """``n`` seeded training problems of one skill, none sharing operands with ``heldout``."""
    family, d = parse_skill(skill)
    out = problem_set(family, d, n + len(heldout) // 4 + 4, split=TRAIN, start=generation * INDEX_STRIDE)
    return disjoint(out, heldout)[:n]


def _fields(p: Problem) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in p.key.split(":", 2)[2].split("|"))


def _nudge_digit(value: int, rng: random.Random) -> int:
    """``value`` with one digit changed (same length, no leading zero)."""
    s = list(str(value))
    i = rng.randrange(len(s))
    choices = [c for c in "0123456789" if c != s[i] and not (i == 0 and c == "0" and len(s) > 1)]
    s[i] = rng.choice(choices)
    return int("".join(s))


def mutate(p: Problem, rng: random.Random, index: int) -> Problem | None:
    """A nearby problem: one digit of one operand (arithmetic) or one number of the list (sort) changed.
    None for families without a mutation rule."""
    f = _fields(p)
    if p.family in _OPS:
        sym, fn = _OPS[p.family]
        a, b = int(f["a"]), int(f["b"])
        if rng.random() < 0.5:
            a = _nudge_digit(a, rng)
        else:
            b = _nudge_digit(b, rng)
        if p.family == "sub" and b > a:
            a, b = b, a
        return _make(p.family, p.difficulty, {"a": a, "b": b, "op": sym}, str(fn(a, b)), rng, ADVERSARIAL, index)
    if p.family == "sort":
        nums = [int(x) for x in f["xs"].split(", ")]
        nums[rng.randrange(len(nums))] = rng.randint(0, 99)
        return _make("sort", p.difficulty, {"xs": ", ".join(map(str, nums))}, ",".join(map(str, sorted(nums))),
                     rng, ADVERSARIAL, index)
    return None


def adversarial(failures: list[Problem], n: int, seed: int, heldout: list[Problem]) -> list[Problem]:
    """Up to ``n`` mutations of problems the model failed (synthetic adversarial training data)."""
    if not failures:
        return []
    rng = random.Random(f"adversarial/{seed}")
    out = [m for i in range(n) if (m := mutate(failures[i % len(failures)], rng, i)) is not None]
    return disjoint(list({p.key: p for p in out}.values()), heldout)


# --------------------------------------------------------------------------- model-proposed problems
PROPOSE_PROMPT = ("Write one Python arithmetic expression that uses {k} operators from +, - and * and "
                  "single-digit numbers. Reply with only the expression.")
_EXPR = re.compile(r"[\d\s+\-*()]+")
_ALLOWED = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Add, ast.Sub, ast.Mult, ast.USub)


def safe_eval(expr: str) -> int | None:
    """The value of an integer +,-,* expression, or None when it is anything else (no eval of names,
    calls, powers or huge numbers)."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        return None
    if not all(isinstance(n, _ALLOWED) for n in ast.walk(tree)):
        return None
    if any(isinstance(n, ast.Constant) and (not isinstance(n.value, int) or abs(n.value) > 999) for n in ast.walk(tree)):
        return None
    return int(eval(compile(tree, "<expr>", "eval"), {"__builtins__": {}}))  # noqa: S307 - AST checked above


def proposal_to_problem(text: str, index: int) -> Problem | None:
    """A pyexpr problem from a model's proposal, or None when the verifier could not check it."""
    line = text.strip().strip("`").strip().splitlines()[0] if text.strip() else ""
    if not line or len(line) > 40 or not _EXPR.fullmatch(line):
        return None
    value = safe_eval(line)
    ops = sum(line.count(c) for c in "+-*")
    if value is None or ops == 0:
        return None
    rng = random.Random(f"proposed/{index}")
    return _make("pyexpr", ops, {"e": line.strip()}, str(value), rng, PROPOSED, index)


def heldout_set(skills: tuple[str, ...], n: int) -> list[Problem]:
    return [p for s in skills for p in problem_set(*parse_skill(s), n=n, split=HELDOUT)]
