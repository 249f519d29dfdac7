"""Reversed addition for the from-scratch recipe (Lee et al. 2025, "Self-Improving Transformers").

Format (character level, no chat template): both operands and the sum are written least-significant digit
first, so the model emits the carry chain in the order it computes it::

    prompt  "321+54="   (123 + 45)
    answer  "861"       (168 reversed), then <eos>

Seed spaces are strings, as in ``leanlm.eval.tasks``: ``"{split}/tinyadd/{digits}/{index}"``; held-out
problems use split ``"heldout"`` and have both operands exactly ``digits`` long, training problems use any
other split name. ``disjoint`` drops training problems whose operands occur in a held-out set.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable

HELDOUT = "heldout"
SEED = "seed"          # the only ground-truth-labelled training data
SELF = "self"          # problems the model labels itself


@dataclass(frozen=True)
class AddProblem:
    a: int
    b: int
    split: str = SEED

    @property
    def digits(self) -> int:
        return max(len(str(self.a)), len(str(self.b)))

    @property
    def prompt(self) -> str:
        return f"{str(self.a)[::-1]}+{str(self.b)[::-1]}="

    @property
    def answer(self) -> str:
        return str(self.a + self.b)[::-1]

    @property
    def key(self) -> tuple[int, int]:
        return (self.a, self.b)

    @property
    def skill(self) -> str:
        return f"tinyadd:{self.digits}"


def _number(rng: random.Random, length: int) -> int:
    return rng.randint(10 ** (length - 1) if length > 1 else 0, 10 ** length - 1)


def sample(rng: random.Random, digits: int, exact: bool, split: str) -> AddProblem:
    """One problem. ``exact``: both operands have ``digits`` digits; otherwise the longer one has exactly
    ``digits`` and the other a uniform length in 1..digits (Lee et al.'s mixed-length training data)."""
    if exact:
        return AddProblem(_number(rng, digits), _number(rng, digits), split)
    la, lb = digits, rng.randint(1, digits)
    if rng.random() < 0.5:
        la, lb = lb, la
    return AddProblem(_number(rng, la), _number(rng, lb), split)


def problems(split: str, digits: int, n: int, exact: bool, start: int = 0, strict: bool = True) -> list[AddProblem]:
    """``n`` distinct problems of one seed space, deterministic in (split, digits, index). Small spaces
    (1-2 digits) hold fewer: ``strict=False`` returns what there is."""
    out, seen, i = [], set(), start
    while len(out) < n:
        if i - start > 20 * n + 100:
            if not strict:
                break
            raise ValueError(f"tinyadd:{digits} ({split}) has fewer than {n} distinct problems")
        p = sample(random.Random(f"{split}/tinyadd/{digits}/{i}"), digits, exact, split)
        if p.key not in seen:
            seen.add(p.key)
            out.append(p)
        i += 1
    return out


def mixed(split: str, digits: int, n: int, exact_share: float) -> list[AddProblem]:
    """``n`` unlabelled problems of one length: ``exact_share`` of them with both operands ``digits`` long
    (the held-out shape, with the longest carry chains), the rest mixed-length (Lee et al.)."""
    k = round(n * exact_share)
    return problems(f"{split}x", digits, k, exact=True) + problems(split, digits, n - k, exact=False)


def heldout(digits: int, n: int) -> list[AddProblem]:
    """Held-out problems with both operands exactly ``digits`` long. At most a fifth of a small length's
    space is held out (1 digit has only 100 problems), so training still sees that length."""
    space = (10 if digits == 1 else 9 * 10 ** (digits - 1)) ** 2
    return problems(HELDOUT, digits, min(n, max(1, space // 5)), exact=True)


def seed_set(max_digits: int, n: int, split: str = SEED) -> list[AddProblem]:
    """Ground-truth seed data: lengths 1..max_digits in equal shares (the longer operand's length)."""
    per = -(-n // max_digits)
    return [p for d in range(1, max_digits + 1) for p in problems(split, d, per, exact=False, strict=False)][:n]


def disjoint(train: list[AddProblem], held: list[AddProblem]) -> list[AddProblem]:
    banned = {p.key for p in held}
    return [p for p in train if p.key not in banned]


def check(p: AddProblem, output: str) -> bool:
    return output.strip() == p.answer


def length_ok(p: AddProblem, output: str) -> bool:
    """Lee et al.'s length filter: a sum of numbers with at most d digits has d or d+1 digits, no leading zero."""
    out = output.strip()
    return out.isdigit() and len(out) in (p.digits, p.digits + 1) and (len(out) == 1 or out[-1] != "0")


def swapped(p: AddProblem) -> AddProblem:
    """The same sum asked the other way round (b+a): a label-free consistency check."""
    return AddProblem(p.b, p.a, p.split)


def agreed(orders: list[list[str]], min_vote: float) -> str | None:
    """The self-label of one problem asked in several equivalent forms (a+b, b+a), ``orders[i]`` holding
    the samples of form i: the majority answer over all samples, kept when it has at least ``min_vote``
    of them and is also the most common answer of every form; otherwise None."""
    answer, share = majority([o for outs in orders for o in outs])
    if share < min_vote or any(majority(outs)[0] != answer for outs in orders):
        return None
    return answer


def label(p: AddProblem, orders: list[list[str]], min_vote: float) -> str | None:
    """The whole label-free filter: the answer ``agreed`` on by every order, if it also passes the length
    filter; otherwise None."""
    answer = agreed(orders, min_vote)
    return answer if answer is not None and length_ok(p, answer) else None


def majority(outputs: list[str]) -> tuple[str, float]:
    """The most common answer among samples and the share of samples that gave it."""
    if not outputs:
        return "", 0.0
    answer, votes = Counter(o.strip() for o in outputs).most_common(1)[0]
    return answer, votes / len(outputs)


Sampler = Callable[[list[str], int, int], list[list[str]]]   # (prompts, k, round) -> k outputs per prompt


def self_label(problems: list[AddProblem], sample: Sampler, k: int, min_vote: float,
               commute: bool = True) -> list[tuple[AddProblem, str]]:
    """The labels ``label`` keeps when each problem is asked as a+b (and b+a with ``commute``) ``k`` times.

    Under unanimity (``min_vote`` 1) samples are drawn in two rounds: one per order first, then ``k - 1``
    more per order only for the problems whose first samples agree and pass the length filter, since any
    other problem is already rejected. The filter is the same; where few labels survive (a new length) most
    of the sampling is saved."""
    forms = [problems] + ([[swapped(p) for p in problems]] if commute else [])

    def ask(idx: list[int], kk: int, rnd: int) -> dict[int, list[list[str]]]:
        outs = sample([f[i].prompt for f in forms for i in idx], kk, rnd)
        m = len(idx)
        return {i: [outs[j * m + t] for j in range(len(forms))] for t, i in enumerate(idx)}

    every = list(range(len(problems)))
    if min_vote >= 1 and k > 1:
        first = ask(every, 1, 0)
        alive = [i for i in every if label(problems[i], first[i], 1.0) is not None]
        rest = ask(alive, k - 1, 1) if alive else {}
        orders = {i: [a + b for a, b in zip(first[i], rest[i])] for i in alive}
    else:
        orders = ask(every, k, 0)
    kept = ((problems[i], label(problems[i], orders[i], min_vote)) for i in sorted(orders))
    return [(p, a) for p, a in kept if a is not None]
