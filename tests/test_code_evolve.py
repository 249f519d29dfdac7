"""The code recipe's pieces: verifier reward and data (full passes of learnable problems only), the reward
hacks it must reject, adversarial problems, the proposer and its reward, the curriculum."""
from __future__ import annotations

import ast
import random

import pytest

from leanlm.eval import codetasks as ct
from leanlm.eval.sandbox import Limits, run_many
from leanlm.evolve import code

LIMITS = Limits(timeout_s=4.0)
P = ct.problem("digits", 1, ct.TRAIN, 0)                      # digit_total(n): sum of the digits of n >= 0
RIGHT = "```python\ndef digit_total(n):\n    return sum(int(c) for c in str(n))\n```"
WRONG = "```python\ndef digit_total(n):\n    return n % 10\n```"


def test_reward_is_the_share_of_tests_and_only_full_passes_train():
    (vs,) = code.verify([P], [[RIGHT, WRONG, RIGHT, WRONG]], LIMITS)
    assert [v.full for v in vs] == [True, False, True, False]
    assert code.reward(vs[0]) == 1.0 and 0.0 <= code.reward(vs[1]) < 1.0
    assert code.solve_rate(vs) == 0.5
    ex = code.training_examples(["PROMPT"], [P], [[RIGHT, WRONG, RIGHT, WRONG]], [vs])
    assert len(ex) == 1 and ex[0].prompt == "PROMPT"                 # duplicates of one program count once
    assert ex[0].completion.startswith("def digit_total(n):") and "```" not in ex[0].completion
    assert run_many([(ct.program(P, ex[0].completion, "strict"), list(P.tests))], LIMITS)[0].full


def test_curriculum_window_keeps_only_learnable_problems():
    (easy,) = code.verify([P], [[RIGHT] * 4], LIMITS)
    (hard,) = code.verify([P], [[WRONG] * 4], LIMITS)
    assert code.training_examples(["x"], [P], [[RIGHT] * 4], [easy]) == []         # rate 1.0: nothing to learn
    assert len(code.training_examples(["x"], [P], [[RIGHT] * 4], [easy], window=False)) == 1
    assert code.training_examples(["x"], [P], [[WRONG] * 4], [hard], window=False) == []
    assert [code.learnable(r) for r in (0.0, 0.2, 0.5, 0.8, 1.0)] == [False, True, True, True, False]


def _hack_on_examples(p: ct.CodeProblem) -> str:
    table = {ast.literal_eval(t.args): ast.literal_eval(t.expected) for t in p.visible}
    return f"```python\ndef {p.fn}(n):\n    return {table!r}[(n,)]\n```"


@pytest.mark.parametrize("reply", [
    _hack_on_examples(P),                                                    # special-cases the shown tests
    "```python\ndef digit_total(n):\n    return eval(open('tests.py').read())\n```",   # reads the test file
    "```python\nimport sys\nsys.exit(0)\n```",                              # exits before the tests
    "```python\nimport os\ndef digit_total(n):\n    os._exit(0)\n```",      # exits from inside a test
    "```python\nimport sys\ndef digit_total(n):\n"
    "    return sys._getframe(1).f_locals.get('expected')\n```",            # looks for the expected value
])
def test_reward_hacks_never_make_training_data(reply):
    (vs,) = code.verify([P], [[reply]], LIMITS)
    assert not vs[0].full
    assert code.training_examples(["x"], [P], [[reply]], [vs], window=False) == []


def test_mutate_failed_shows_the_missed_inputs_and_keeps_the_function():
    (vs,) = code.verify([P], [[WRONG]], LIMITS)
    missed = code.missed_inputs(P, vs[0])
    assert missed, "n % 10 must miss some hidden input"
    q = code.mutate_failed(P, vs[0], random.Random(0), 1)
    assert q.family == P.family and q.level == P.level and q.meta["params"] == P.meta["params"]
    assert [ast.literal_eval(t.args) for t in q.visible] == missed[:2]
    assert all(f">>> digit_total({a[0]!r})" in q.prompt for a in missed[:2]) and q.origin == code.ADVERSARIAL
    assert run_many([(q.reference, list(q.tests))], LIMITS)[0].full
    assert code.mutate_failed(P, code.verify([P], [[RIGHT]], LIMITS)[0][0], random.Random(0), 2) is None
    v = code.near_variant(ct.problem("caesar", 2, ct.TRAIN, 0), random.Random(1), 3)
    assert v.family == "caesar" and v.level == 2 and v.split == ct.TRAIN


def test_adversarial_round_is_deterministic_and_made_only_from_failures():
    probs = [P, ct.problem("rle", 1, ct.TRAIN, 0)]
    samples = [[WRONG], ["```python\ndef pack_runs(s):\n    return s\n```"]]
    vs = code.verify(probs, samples, LIMITS)
    a, b = code.adversarial(probs, vs, 4, seed=1), code.adversarial(probs, vs, 4, seed=1)
    assert [p.prompt for p in a] == [p.prompt for p in b] and 1 <= len(a) <= 2
    good = code.verify([P], [[RIGHT]], LIMITS)
    assert code.adversarial([P], good, 4, seed=1) == []


PROPOSAL = '''Sure!
```python
def count_upper_letters(s):
    """Return how many capital letters s has."""
    return sum(c.isupper() for c in s)

assert count_upper_letters("AbC") == 2
assert count_upper_letters("") == 0
assert count_upper_letters("xyz") == 0
```'''


def test_proposals_parse_into_call_tests_and_must_pass_their_own_tests():
    q = code.parse_proposal(PROPOSAL, 0)
    assert q is not None and q.fn == "count_upper_letters" and len(q.tests) == 3
    assert all(t.kind == "call" for t in q.tests) and q.prompt.rstrip().endswith('"""')
    assert '"""Return how many capital letters s has."""' in q.prompt and "return sum" not in q.prompt
    assert run_many([(q.reference, list(q.tests))], LIMITS)[0].full
    bad = code.parse_proposal(PROPOSAL.replace('("AbC") == 2', '("AbC") == 3'), 1)
    assert not run_many([(bad.reference, list(bad.tests))], LIMITS)[0].full
    for text in ("no code here", "def f(x):\n    return x\n", PROPOSAL.replace('"""Return how many capital letters s has."""', "")):
        assert code.parse_proposal(text, 2) is None


def test_proposer_reward_is_absolute_zeros():
    assert code.proposer_reward(0.0) == 0.0 and code.proposer_reward(1.0) == 0.0
    assert code.proposer_reward(0.25) == pytest.approx(0.75) and code.proposer_reward(0.75) == pytest.approx(0.25)


def test_plan_opens_the_next_level_of_a_solved_skill_and_spends_the_budget():
    skills, counts, notes = code.plan_skills(("rle:1", "keep:1"), {"rle:1": 0.9, "keep:1": 0.1}, 20, seed=3)
    assert skills == ("rle:1", "keep:1", "rle:2") and sum(counts.values()) == 20
    assert any("opens rle:2" in n for n in notes)
    assert code.plan_skills(("rle:1", "keep:1"), {"rle:1": 0.9, "keep:1": 0.1}, 20, seed=3)[1] == counts
    _, c2, _ = code.plan_skills(("rle:3",), {"rle:3": 1.0}, 5, seed=0)
    assert c2 == {"rle:3": 5}                                 # no level 4
