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


# ------------------------------------------------------------------ issue 19: shifted held-out, addmix
from leanlm.eval.shifted import all_carry_pair, number_words  # noqa: E402
from leanlm.eval.tasks import SHIFTED, check_strict  # noqa: E402


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_shifted_wordings_are_six_or_more_and_never_trained_or_heldout(family):
    t = FAMILIES[family].templates
    assert len(t[SHIFTED]) >= 6 and not set(t[SHIFTED]) & (set(t[TRAIN]) | set(t[HELDOUT]))
    problems = problem_set(family, 3, 60, SHIFTED)
    rendered = {re.sub(r"\d[\d,]*", "N", p.question) for p in problems}
    trained = {re.sub(r"\d[\d,]*", "N", problem(family, 3, TRAIN, i).question) for i in range(300)}
    assert not rendered & trained                               # no shifted question reads like a training one
    for p in problems:
        assert check(p, p.answer) and check_strict(p, p.answer)


def test_shifted_addition_mixes_lengths_and_carries_everywhere():
    ps = problem_set("add", 3, 300, SHIFTED)
    ops = [tuple(int(kv.split("=")[1]) for kv in p.key.split(":", 2)[2].split("|")[:2]) for p in ps]
    assert sum(len(str(a)) != len(str(b)) for a, b in ops) > 100          # operands of different lengths
    assert {len(str(a)) for a, _ in ops} == {1, 2, 3}
    assert any("hundred" in p.question for p in ps)                         # numbers in words
    assert all(int(p.answer) == a + b for p, (a, b) in zip(ps, ops))
    rng = __import__("random").Random(0)
    for _ in range(200):
        a, b = all_carry_pair(rng, 3)
        carry, x, y = 0, a, b
        while x or y:                                                       # a carry out of every column
            carry = (x % 10 + y % 10 + carry) >= 10
            assert carry, (a, b)
            x, y = x // 10, y // 10


def test_number_words():
    assert number_words(0) == "zero" and number_words(42) == "forty-two" and number_words(701) == "seven hundred one"
    assert number_words(1232) == "one thousand two hundred thirty-two"
    with pytest.raises(ValueError):
        number_words(-1)


def test_addmix_trains_any_operand_lengths_in_training_wordings():
    ps = problem_set("addmix", 3, 200, TRAIN)
    lengths = {(len(k.split("a=")[1].split("|")[0]), len(k.split("b=")[1].split("|")[0])) for k in (p.key for p in ps)}
    assert len(lengths) == 9                                                 # every pair of lengths 1..3
    assert {p.question.replace(str(p.key), "") for p in ps}                  # phrased
    train_t = {re.sub(r"\d+", "N", q) for q in FAMILIES["add"].templates[TRAIN]}
    assert all(re.sub(r"\d+", "N", p.question.replace("{a}", "")) in
               {t.replace("{a}", "N").replace("{b}", "N") for t in train_t} for p in ps[:50])
