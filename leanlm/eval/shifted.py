"""The shifted held-out distribution: problems the training generator never produces.

Per family (``leanlm.eval.tasks``, split ``"shifted"``): operands of *different* lengths (each 1..d digits
at difficulty d; for addition a third of them built to carry in every column), and six or more wordings
that neither the training nor the ordinary held-out phrasings use - questions in words, numbers written
in words, word problems, and numbers with thousands separators. Lists and strings get other lengths than
the trainer's. A model that learnt the generator's structure (equal operand lengths, nine wordings) rather
than the skill scores lower here (issue 19: 67% on same-length, 5% on mixed-length additions).
"""
from __future__ import annotations

import random
import string

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """English words for 0 <= n < 10**9 ("seven hundred one", "forty-two")."""
    if not 0 <= n < 10 ** 9:
        raise ValueError(f"number_words covers 0..999,999,999, not {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("-" + _ONES[n % 10] if n % 10 else "")
    if n < 1000:
        return _ONES[n // 100] + " hundred" + (" " + number_words(n % 100) if n % 100 else "")
    for size, name in ((10 ** 6, "million"), (1000, "thousand")):
        if n >= size:
            rest = n % size
            return number_words(n // size) + f" {name}" + (" " + number_words(rest) if rest else "")
    raise AssertionError("unreachable")


def _ndigit(rng: random.Random, d: int) -> int:
    return rng.randint(10 ** (d - 1) if d > 1 else 0, 10 ** d - 1)


def mixed_pair(rng: random.Random, d: int) -> tuple[int, int]:
    """Two operands whose lengths are drawn independently from 1..d (at least one pair of lengths differs
    in most draws when d > 1)."""
    return _ndigit(rng, rng.randint(1, d)), _ndigit(rng, rng.randint(1, d))


def all_carry_pair(rng: random.Random, d: int) -> tuple[int, int]:
    """Operands (lengths from 1..d) whose sum carries out of every column, e.g. 587 + 645, 996 + 7."""
    la, lb = rng.randint(1, d), rng.randint(1, d)
    long_, short = max(la, lb), min(la, lb)
    while True:
        a, b = [], []
        for i in range(long_):
            if i < short:
                x = rng.randint(1, 9) if i == 0 else rng.randint(0, 9)
                y = rng.randint(10 - x if i == 0 else max(0, 9 - x), 9)
                a.append(x)
                b.append(y)
            else:
                a.append(9)             # only the longer operand has this column: 9 + carry carries on
        if a[-1] and (b[-1] if b else 1):   # no leading zeros
            break
    x, y = int("".join(map(str, reversed(a)))), int("".join(map(str, reversed(b))))
    return (x, y) if la >= lb else (y, x)


def binary_fields(rng: random.Random, d: int, op: str, carry: bool = False, ordered: bool = False) -> dict:
    a, b = all_carry_pair(rng, d) if carry and rng.random() < 1 / 3 else mixed_pair(rng, d)
    if ordered and b > a:
        a, b = b, a
    return {"a": a, "b": b, "op": op, "_wa": number_words(a), "_wb": number_words(b),
            "_sa": f"{a:,}", "_sb": f"{b:,}"}


def sort_fields(rng: random.Random, d: int) -> tuple[dict, list[int]]:
    nums = [rng.randint(0, 99) for _ in range(d + rng.randint(1, 4))]   # other lengths than d + 2
    return {"xs": ", ".join(map(str, nums))}, sorted(nums)


def reverse_fields(rng: random.Random, d: int) -> tuple[dict, str]:
    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(d + rng.randint(1, 4)))
    return {"s": word}, word[::-1]


def arith_templates(family: str) -> tuple[str, ...]:
    return {
        "add": ("What do you get when you add {a} to {b}?", "What is the sum of {a} and {b}?",
                "What is {_wa} plus {_wb}?", "I have {a} coins and find {b} more. How many coins do I have now?",
                "Add up {_sa} and {_sb}.", "{a} plus {b} makes how many?", "What is the total of {a} and {b}?"),
        "sub": ("What do you get when you take {b} away from {a}?", "What is the difference between {a} and {b}?",
                "What is {_wa} minus {_wb}?", "I had {a} coins and spent {b}. How many are left?",
                "Subtract {_sb} from {_sa}.", "{a} minus {b} leaves how many?"),
        "mul": ("What do you get when you multiply {a} by {b}?", "What is the product of {a} and {b}?",
                "What is {_wa} times {_wb}?", "There are {a} boxes with {b} pens in each. How many pens are there?",
                "Multiply {_sa} by {_sb}.", "{a} times {b} makes how many?"),
    }[family]


SORT_TEMPLATES = ("Order these from smallest to biggest: {xs}.", "Give the numbers {xs} in ascending order.",
                  "Rank {xs} from low to high.", "Write {xs} in increasing order.", "Sort: {xs}",
                  "Put {xs} in order, smallest first.")
REVERSE_TEMPLATES = ("Write the letters of '{s}' in reverse.", "What do you get when you reverse '{s}'?",
                     "Flip '{s}' backwards.", "Reverse this word: {s}", "Read '{s}' from right to left.",
                     "Give '{s}' spelled backwards.")
PYEXPR_TEMPLATES = ("What does Python print for print({e})?", "Python: {e} evaluates to what?",
                    "Calculate the Python expression {e}.", "What is {e} in Python?",
                    "If you type {e} into a Python shell, what do you get?", "Work out this Python expression: {e}")
