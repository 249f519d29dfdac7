import re

import pytest

from leanlm.eval.extract import extract_int, extract_int_list, extract_text
from leanlm.eval.tasks import FAMILIES, HELDOUT, TRAIN, check, disjoint, parse_skill, problem, problem_set


@pytest.mark.parametrize("text,want", [
    ("68", 68), ("The answer is 68.", 68), ("23 + 45 = 68", 68), ("23 + 45 = 60 + 8 = 68", 68),
    ("**68**", 68), ("Answer: 1,234", 1234), ("\\boxed{42} because 40+2", 42), ("It is -7", -7),
    ("The result is 12, since 5 + 7 makes 12 and not 13", 12), ("no digits here", None),
    ("3 + 3 equals 6.", 6),
])
def test_extract_int_on_messy_outputs(text, want):
    assert extract_int(text) == want


@pytest.mark.parametrize("text,want", [
    ("olleh", "olleh"), ("'olleh'", "olleh"), ("The answer is: `olleh`.", "olleh"), ("\n**olleh**\nmore", "olleh"),
])
def test_extract_text(text, want):
    assert extract_text(text) == want


def test_extract_int_list():
    assert extract_int_list("Sorted: 1, 5, 23") == [1, 5, 23]
    assert extract_int_list("The answer is [3, 4]\nbecause 9") == [3, 4]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generators_are_seeded_and_checkers_accept_the_answer(family):
    for d in (1, 3):
        a, b = problem(family, d, TRAIN, 5), problem(family, d, TRAIN, 5)
        assert a == b
        assert check(a, a.answer) and check(a, f"The answer is {a.answer}.")
        assert not check(a, "I do not know")


def test_arithmetic_answers_are_right():
    for i in range(50):
        p = problem("add", 3, HELDOUT, i)
        a, b = [int(x) for x in p.key.split(":")[-1].replace("a=", "").replace("b=", "").split("|")[:2]]
        assert int(p.answer) == a + b and 100 <= a <= 999
        q = problem("pyexpr", 2, TRAIN, i)
        assert check(q, q.answer)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_training_phrasings_are_many_and_never_the_heldout_ones(family):
    phrasings = FAMILIES[family].templates
    assert len(phrasings[TRAIN]) >= 3 and not set(phrasings[TRAIN]) & set(phrasings[HELDOUT])
    used = {re.sub(r"'[a-z]+'|[\d(]+[\d()+\-* ]*", "X", problem(family, 1, TRAIN, i).question) for i in range(200)}
    assert len(used) == len(phrasings[TRAIN])    # the generator draws from all of them


def test_heldout_uses_its_own_seed_space_and_phrasing():
    held = problem_set("add", 2, 200, HELDOUT)
    train = [problem("add", 2, TRAIN, i) for i in range(2000)]
    assert len({p.key for p in held}) == 200
    def template(q):
        return re.sub(r"\d+", "N", q)
    train_phrasings = {template(p.question) for p in train}
    assert not any(template(p.question) in train_phrasings for p in held)
    clean = disjoint(train, held)
    assert not {p.key for p in clean} & {p.key for p in held}
    assert len(clean) < len(train)  # 2-digit space is small: some collisions existed and were removed


def test_parse_skill_errors():
    assert parse_skill("mul:3") == ("mul", 3)
    with pytest.raises(ValueError):
        parse_skill("add")
    with pytest.raises(ValueError):
        parse_skill("add:0")
