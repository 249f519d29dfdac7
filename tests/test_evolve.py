"""Unit tests of the evolve building blocks: PCGrad, controller, generator, verifiers, judge agreement, gate."""
from __future__ import annotations

import math
import random

import pytest
import torch

from leanlm.eval.tasks import problem, problem_set
from leanlm.evolve import controller, generator, tinyadd
from leanlm.evolve.discriminator import agreement, parse_verdict, preference_pairs, sft_examples
from leanlm.evolve.gate import decide
from leanlm.evolve.surgery import combine, project_conflicting
from leanlm.evolve.train import dpo_loss, lr_at, TrainConfig


# ------------------------------------------------------------------------------------------- PCGrad
def test_pcgrad_hand_computed_conflict():
    # g_new . g_ret = -1, |g_ret|^2 = 2  ->  g_new' = (1,0) + 0.5 * (-1,1) = (0.5, 0.5)
    g_new, g_ret = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    proj, info = project_conflicting(g_new, g_ret)
    assert info.projected and info.dot == pytest.approx(-1.0)
    assert info.cosine == pytest.approx(-1 / math.sqrt(2))
    torch.testing.assert_close(proj, torch.tensor([0.5, 0.5]))
    assert float(proj @ g_ret) == pytest.approx(0.0, abs=1e-7)   # no longer conflicts
    total, _ = combine(g_new, g_ret, surgery=True)
    torch.testing.assert_close(total, torch.tensor([-0.5, 1.5]))
    plain, info_off = combine(g_new, g_ret, surgery=False)       # ablation: plain sum
    torch.testing.assert_close(plain, torch.tensor([0.0, 1.0]))
    assert not info_off.projected and info_off.dot == pytest.approx(-1.0)


def test_pcgrad_leaves_agreeing_gradients_alone():
    g_new, g_ret = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 2.0])
    proj, info = project_conflicting(g_new, g_ret)
    assert not info.projected and torch.equal(proj, g_new)
    total, _ = combine(g_new, g_ret, surgery=True, ret_weight=0.5)
    torch.testing.assert_close(total, torch.tensor([1.5, 1.0, 1.0]))
    with pytest.raises(ValueError):
        project_conflicting(torch.zeros(3), torch.zeros(2))


# ------------------------------------------------------------------------------------------- controller
def test_controller_on_synthetic_success_table():
    skills = ("add:1", "add:3", "sort:1", "mul:2")
    history = [{"add:1": 0.95, "add:3": 0.40, "sort:1": 0.0, "mul:2": 0.80},
               {"add:1": 0.96, "add:3": 0.50, "sort:1": 0.0, "mul:2": 0.50}]
    plan = controller.plan(skills, history, total=100, course=controller.Course(), mastery=0.9, max_difficulty=4)
    # add:1 is mastered -> replaced by add:2 (unprobed: weight of p=0 plus floor)
    assert plan.skills == ("add:2", "add:3", "sort:1", "mul:2")
    assert any("add:1 mastered" in d for d in plan.decisions)
    # mul:2 slipped 0.8 -> 0.5: learnability .25 + progress .30 + slip .30 ; add:3: .25 + .10 ; sort:1: floor only
    assert plan.weights["mul:2"] == pytest.approx(0.02 + 0.25 + 0.30 + 0.30)
    assert plan.weights["add:3"] == pytest.approx(0.02 + 0.25 + 0.10)
    assert plan.weights["sort:1"] == pytest.approx(0.02)
    assert sum(plan.problems.values()) == 100
    assert plan.problems["mul:2"] > plan.problems["add:3"] > plan.problems["sort:1"] >= 1


def test_controller_rollback_and_tiny_targets():
    c, why = controller.after_rollback(controller.Course())
    assert (c.lr_scale, c.samples_scale, c.rollbacks) == (0.5, 1.5, 1) and "rollback" in why
    plan = controller.tiny_plan(6, {7: 0.99, 8: 0.99, 9: 0.2}, 900, 0.9, 3, 12)
    assert plan.targets == [7, 8] and plan.reach == 8          # 9 disagrees (0.2)
    assert plan.problems == {7: 450, 8: 450}
    assert controller.tiny_plan(6, {7: 0.3, 8: 0.99}, 900, 0.9, 3, 12).targets == [7]
    assert controller.tiny_plan(11, {12: 1.0}, 900, 0.9, 3, 12).targets == [12]


def test_tiny_controller_holds_the_frontier_when_labels_get_scarce():
    # reach+1 yields labels for 30% of problems (< advance 0.5): hold, label the frontier and reach+1
    plan = controller.tiny_plan(10, {10: 0.8, 11: 0.3, 12: 0.05}, 1000, 0.98, 2, 16, advance=0.5, max_scale=3)
    assert plan.targets == [10, 11] and plan.reach == 10
    # problems scale with 1 / yield (500 / 0.8 = 625; 500 / 0.3 = 1667), capped at 3x the equal share
    assert plan.problems == {10: 625, 11: 1500}
    assert any("hold" in d for d in plan.decisions)
    # enough agreement: advance to 11 only (12 does not agree)
    plan = controller.tiny_plan(10, {10: 0.9, 11: 0.6, 12: 0.05}, 1000, 0.98, 2, 16, advance=0.5, max_scale=3)
    assert plan.targets == [11] and plan.reach == 11 and plan.problems == {11: 1667}
    # at the target length there is nothing further to reach: label it again
    assert controller.tiny_plan(16, {16: 0.2}, 1000, 0.98, 2, 16, advance=0.5).targets == [16]


def test_oversampling_keeps_new_labels_a_fixed_share():
    from leanlm.evolve.loop import oversample
    from leanlm.evolve.train import Example

    fresh, old = [Example("n", str(i)) for i in range(10)], [Example("o", str(i)) for i in range(300)]
    mix = oversample(fresh, old, 0.5)
    assert sum(e.prompt == "n" for e in mix) == 300 and len(mix) == 600
    assert oversample(fresh, old, 0.0) == fresh + old and oversample(fresh, [], 0.5) == fresh


# ------------------------------------------------------------------------------------------- generator
def test_mutation_is_nearby_correct_and_never_heldout():
    rng = random.Random(0)
    p = problem("add", 3, "train", 5)
    for i in range(20):
        m = generator.mutate(p, rng, i)
        a, b = (int(x.split("=")[1]) for x in m.key.split(":", 2)[2].split("|")[:2])
        assert int(m.answer) == a + b and len(str(a)) == len(str(b)) == 3
        changed = sum(x != y for x, y in zip(f"{a:03d}{b:03d}", p.key.split("a=")[1].split("|")[0] +
                                             p.key.split("b=")[1].split("|")[0]))
        assert changed == 1
    held = problem_set("add", 2, 40, split="heldout")
    adv = generator.adversarial([held[0]], 30, seed=1, heldout=held)
    assert adv and not {q.key for q in adv} & {h.key for h in held}
    fresh = generator.fresh("add:2", 50, generation=1, heldout=held)
    assert len(fresh) == 50 and all(q.split == "train" for q in fresh)
    assert not {q.key for q in fresh} & {h.key for h in held}


def test_proposals_kept_only_when_verifiable():
    q = generator.proposal_to_problem("3 + 4 * 2", 0)
    assert q is not None and q.answer == "11" and q.family == "pyexpr" and q.difficulty == 2
    for bad in ("__import__('os').system('ls')", "2 ** 99", "x + 1", "", "9" * 50, "7"):
        assert generator.proposal_to_problem(bad, 1) is None, bad


# ------------------------------------------------------------------------------------------- tinyadd
def test_tinyadd_format_and_filters():
    p = tinyadd.AddProblem(123, 45)
    assert (p.prompt, p.answer, p.digits) == ("321+54=", "861", 3)
    assert tinyadd.length_ok(p, "861") and tinyadd.length_ok(p, "0001")
    assert not tinyadd.length_ok(p, "86") and not tinyadd.length_ok(p, "86x") and not tinyadd.length_ok(p, "8610")
    assert tinyadd.majority(["861", "861", "871"]) == ("861", pytest.approx(2 / 3))
    held = tinyadd.heldout(4, 30)
    assert all(len(str(h.a)) == len(str(h.b)) == 4 for h in held)
    train = tinyadd.problems("seed", 4, 200, exact=False)
    assert not {t.key for t in tinyadd.disjoint(train, held)} & {h.key for h in held}


# ------------------------------------------------------------------------------------------- discriminator
def test_judge_agreement_hand_computed():
    verified = [True, True, True, False, False, False, True, False]
    judged = [True, True, False, False, True, None, True, False]
    a = agreement(judged, verified)
    assert (a["tp"], a["tn"], a["fp"], a["fn"], a["abstain"]) == (3, 2, 1, 1, 1)
    assert a["agreement"] == pytest.approx(5 / 8)
    # kappa: po = 5/8; judge yes = 4/8, verifier yes = 4/8 -> pe = 0.5 -> kappa = 0.25
    assert a["kappa"] == pytest.approx(0.25)
    assert agreement([True, False], [True, False])["kappa"] == pytest.approx(1.0)
    assert parse_verdict("YES.") is True and parse_verdict("no, it is 12") is False and parse_verdict("maybe") is None
    with pytest.raises(ValueError):
        agreement([True], [True, False])


def test_sft_and_preference_data():
    ex = sft_examples(["p1", "p2"], [["5", "5", "6"], ["x", "y"]], [[True, True, False], [False, False]])
    assert [(e.prompt, e.completion) for e in ex] == [("p1", "5")]
    pairs = preference_pairs(["p1", "p2"], [["5", "6"], ["7"]], [[True, False], [True]])
    assert pairs == [{"prompt": "p1", "chosen": "5", "rejected": "6"}]


# ------------------------------------------------------------------------------------------- gate, train
def test_gate_decisions():
    base = {"score": 0.1, "retention": 0.8, "ppl": 16.0, "refusal_rate": 0.5}
    parent = {"score": 0.3}
    good = {"score": 0.4, "retention": 0.78, "ppl": 16.4, "refusal_rate": 0.46, "refusal_kept": 0.96}
    assert decide(good, parent, base, 0.03, 0.05, 0.05)[0]
    for key, bad in (("score", 0.29), ("retention", 0.7), ("ppl", 16.6), ("refusal_rate", 0.44), ("refusal_kept", 0.9)):
        ok, reasons = decide({**good, key: bad}, parent, base, 0.03, 0.05, 0.05)
        assert not ok and sum(r.startswith("FAIL") for r in reasons) == 1, key


def test_dpo_loss_and_schedule():
    z = torch.zeros(2)
    assert float(dpo_loss(z, z, z, z)) == pytest.approx(math.log(2))
    # margin (2 - 0) - (0 - 0) = 2, beta 0.5 -> -log sigmoid(1)
    loss = dpo_loss(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), beta=0.5)
    assert float(loss) == pytest.approx(-math.log(1 / (1 + math.exp(-1))))
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=0.01)


def test_dpo_training_moves_preference_toward_chosen():
    from leanlm import load
    from leanlm.evolve.train import train_dpo

    torch.manual_seed(0)
    model, tok = load("tiny-llama", dtype="fp32")
    pairs = [{"prompt": "12+34=", "chosen": "46", "rejected": "99"},
             {"prompt": "5+5=", "chosen": "10", "rejected": "55"}]
    out = train_dpo(model, tok, pairs, steps=15, lr=3e-3, beta=0.5, progress=False)
    assert out["loss"][0] == pytest.approx(math.log(2), abs=1e-4)      # policy == reference at step 0
    assert out["margin_after"] > out["margin_before"] + 1.0


def test_tinyadd_commuted_self_label_needs_both_orders_to_agree():
    p = tinyadd.AddProblem(123, 45)
    q = tinyadd.swapped(p)
    assert (q.a, q.b) == (45, 123) and q.answer == p.answer and q.prompt == "54+321="
    right, wrong = p.answer, "869"
    assert tinyadd.agreed([[right] * 5, [right] * 4 + [wrong]], 0.6) == right
    # a consistent error in one order only: the orders disagree, no label
    assert tinyadd.agreed([[wrong] * 5, [right] * 5], 0.6) is None
    # agreement in both orders but too few votes overall
    assert tinyadd.agreed([[right, right, wrong, "1", "2"], [right, right, wrong, "3", "4"]], 0.6) is None
    assert tinyadd.agreed([[right] * 3 + [wrong] * 2], 0.6) == right           # one order: plain majority vote
    # the whole filter: agreed and of a possible length (a sum of 3-digit numbers has 3 or 4 digits)
    assert tinyadd.label(p, [[right] * 5, [right] * 5], 1.0) == right
    assert tinyadd.label(p, [["86"] * 5, ["86"] * 5], 1.0) is None


def test_tinyadd_two_round_unanimity_keeps_exactly_what_the_one_pass_filter_keeps():
    probs = tinyadd.problems("t", 5, 60, exact=False)
    rng, table = random.Random(0), {}
    for p in probs + [tinyadd.swapped(p) for p in probs]:
        outs, r = [p.answer] * 5, rng.random()
        if r < 0.3:
            outs[0] = str(int(p.answer[0]) ^ 1) + p.answer[1:]     # the first sample is wrong
        elif r < 0.5:
            outs[3] = "7"                                         # a later sample is wrong (and too short)
        table[p.prompt] = outs
    drawn = []

    def rounds(prompts, k, rnd):                                  # round 0 hands out sample 0, round 1 the rest
        drawn.append(len(prompts) * k)
        return [table[q][(0 if rnd == 0 else 1):][:k] for q in prompts]

    def one_pass(p, vote):
        return tinyadd.label(p, [table[p.prompt], table[tinyadd.swapped(p).prompt]], vote)

    two = tinyadd.self_label(probs, rounds, 5, 1.0)
    assert two == [(p, a) for p in probs if (a := one_pass(p, 1.0)) is not None]
    assert 0 < len(two) < len(probs) // 2
    assert drawn[0] == 2 * len(probs) and sum(drawn) < 0.8 * 2 * 5 * len(probs)   # rejected early: fewer samples
    # below unanimity every sample is drawn in one round
    drawn.clear()
    assert tinyadd.self_label(probs, rounds, 5, 0.6) == [(p, a) for p in probs if (a := one_pass(p, 0.6)) is not None]
    assert drawn == [2 * 5 * len(probs)]


def test_shared_prompt_sampling_matches_repeated_prompts():
    """k samples with the prompt encoded once (KV cache repeated) = num_return_sequences on k copies:
    same seeded draws, left-padded prompts of different lengths included."""
    from leanlm.eval.generate import GenerationConfig, generate
    from leanlm.models import load

    torch.manual_seed(0)
    model, tok = load("tiny-llama", dtype="fp32")
    prompts = ["12+3=", "999+999=", "7=", "40+50+60="]
    runs = {share: generate(model, tok, prompts, GenerationConfig(max_new_tokens=6, batch_size=4, temperature=1.0,
                                                                  num_samples=3, chat=False, seed=5,
                                                                  share_prompt=share), progress=False)
            for share in (False, True)}
    assert runs[True] == runs[False]
    assert all(len(o) == 3 for o in runs[True]) and len({s for o in runs[True] for s in o}) > 3   # really sampled


def test_lm_loss_skips_the_prompt_but_not_the_labels():
    """The output head runs only from the first labelled position; the loss equals the full-logits one."""
    import torch.nn.functional as F

    from leanlm.evolve.train import IGNORE, Example, collate, encode, lm_loss
    from leanlm.models import load

    torch.manual_seed(0)
    model, tok = load("tiny-llama", dtype="fp32")
    batch = collate([encode(tok, Example("123+45=", "168")), encode(tok, Example("9+1000000=", "1000009"))],
                    tok.pad_token_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    full = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE)
    assert torch.allclose(lm_loss(model, batch), full, rtol=1e-5, atol=1e-6)


def test_verified_answers_are_cut_to_their_shortest_verified_prefix():
    from leanlm.evolve.discriminator import shortest_verified

    p = problem("add", 2, "train", 0)
    a = p.answer
    assert shortest_verified(p, f"The answer is {a}. To calculate it, we add") == f"The answer is {a}."
    assert shortest_verified(p, f"So 1 + 2 = {a} in total.\n#### and then you") == f"So 1 + 2 = {a}"
    assert shortest_verified(p, f"Hmm. 3 is small. The sum is {a}. Done.") == f"Hmm. 3 is small. The sum is {a}."
    assert shortest_verified(p, f"{a}") == f"{a}"
    # a number ends a cut too, with the closing marks right after it; earlier numbers do not verify
    assert shortest_verified(p, f"1 + 1 = {a} (1 is the value of 1 here.)") == f"1 + 1 = {a}"
    assert shortest_verified(p, f'"That is, 1 + 1 = {a}", but since we') == f'"That is, 1 + 1 = {a}"'
    assert shortest_verified(p, f"The answer is {a} with only 12 digits.") == f"The answer is {a}"
    big = problem("add", 4, "train", 0)
    n = int(big.answer)
    assert shortest_verified(big, f"The answer is {n:,}, as 1 + 2 = 3.") == f"The answer is {n:,}"
    lst = problem("sort", 1, "train", 0)
    assert shortest_verified(lst, f"Sorted: {lst.answer.replace(',', ', ')}. Then 7.") == \
        f"Sorted: {lst.answer.replace(',', ', ')}."
    # trimming goes into the SFT data when the problems are given
    ex = sft_examples(["q"], [[f"{a}. And more text.", "7"]], [[True, False]], problems=[p])
    assert [e.completion for e in ex] == [f"{a}."]
