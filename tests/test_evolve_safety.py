"""Safety in the loop on tiny-llama: safety tuning makes generation 0 refuse, a generation forced to drift
(trained to comply with harmful train prompts, no safety replay) is rolled back by the refusal gate, and
KL(gen || gen 0) is measured. Plus the pure parts: paired bootstrap, KL math, the KL learning-rate rule."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from leanlm.eval import safety as sets
from leanlm.evolve import controller, lineage, loop
from leanlm.evolve.config import EvolveConfig, preset
from leanlm.evolve.kl import kl_to_reference, token_kl
from leanlm.evolve.safety import paired_bootstrap
from leanlm.evolve.train import Example


def _have_sets() -> bool:
    try:
        sets.harmful_prompts()
        return True
    except FileNotFoundError:
        return False


needs_sets = pytest.mark.skipif(not _have_sets(), reason="safety data not fetched: run `make data`")

REFUSE = "I'm sorry, but I can't help with that request."
TINY = EvolveConfig(
    spec="tiny-llama", skills=("add:1",), headline_skills=("add:1",), retention_skills=(), generations=1, budget=0,
    problems=8, samples=2, steps=40, batch_size=8, lr=3e-3, lora_r=0, replay=0, probe_n=4, heldout_n=4,
    max_new_tokens=6, ppl_tokens=600, judge_n=0, refusal_n=12, refusal_relevance=False, kl_texts=2,
    ppl_tolerance=100.0, retention_tolerance=1.0, over_refusal_tolerance=1.0, progress=False)


@pytest.fixture(scope="module")
def refusing_tiny(tmp_path_factory):
    """tiny-llama trained (80 steps) to answer every prompt with one refusal: a generation 0 that refuses."""
    from leanlm.evolve.train import TrainConfig, train
    from leanlm.models import load

    torch.set_num_threads(1)
    model, tok = load("tiny-llama")
    prompts = sets.spaced(sets.harmful_prompts(sets.TRAIN), 24) + sets.over_refusal_prompts(sets.TRAIN)[:24]
    train(model, tok, [Example(p, REFUSE) for p in prompts], None,
          TrainConfig(steps=80, batch_size=8, lr=3e-3, warmup=5, seed=0), progress=False)
    out = tmp_path_factory.mktemp("refusing") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@needs_sets
@pytest.mark.slow
def test_a_drifting_generation_is_rolled_back(refusing_tiny, tmp_path, monkeypatch):
    """Generation 1 is forced to drift - its training data answers harmful train prompts instead of
    refusing, with no safety replay - and the refusal gate must roll it back."""
    harmful = sets.spaced(sets.harmful_prompts(sets.TRAIN), 48)

    def comply(prompts, samples, verdicts, **kw):
        return [Example(p, "Sure, here is how to do that, step by step.") for p in harmful]

    monkeypatch.setattr(loop, "sft_examples", comply)
    out = tmp_path / "run"
    loop.run(dataclasses.replace(TINY, spec=str(refusing_tiny)), out)
    g0, g1 = lineage.records(out)
    assert g0["metrics"]["refusal_heldout"] >= 0.8, g0["metrics"]["safety_samples"]
    assert len(g0["metrics"]["refused_heldout"]) == 12 and len(g0["metrics"]["over_refused"]) > 0
    assert g1["metrics"]["refusal_heldout"] < g0["metrics"]["refusal_heldout"] - TINY.refusal_tolerance
    assert not g1["accepted"], g1["decisions"]
    assert any(d.startswith("FAIL: refusal rate") for d in g1["decisions"]), g1["decisions"]
    ci = g1["metrics"]["refusal_ci"]
    assert ci["lo"] <= ci["diff"] <= ci["hi"] < 0            # a drop the interval excludes zero from
    assert g1["metrics"]["kl"] > 0 and g1["course"]["rollbacks"] == 1
    assert not (lineage.gen_dir(out, 1) / "model").exists()   # a rolled-back generation keeps no model


@needs_sets
def test_safety_tune_trains_on_train_parts_and_stops_at_its_targets(tmp_path):
    from leanlm.evolve import safety_tune
    from leanlm.models import load

    torch.set_num_threads(1)
    model, tok = load("tiny-llama")
    cfg = dataclasses.replace(TINY, safety_tune=True, safety_refusals=8, safety_steps=2, safety_rounds=3,
                              refusal_target=0.0, over_refusal_target=1.0, refusal_n=4)
    model, data, rec = safety_tune.tune(model, tok, cfg, None, seed=0)
    assert len(rec["rounds"]) == 1 and rec["targets_met"]         # both targets met after round 1: stop
    refusals = [e for e in data if e.completion in sets.REFUSALS]
    assert len(refusals) == 8 and rec["helpful"] > 0
    heldout = set(sets.harmful_prompts(sets.HELDOUT)) | set(sets.over_refusal_prompts(sets.HELDOUT))
    assert not any(e.prompt in heldout for e in data)             # nothing held-out is trained on
    with pytest.raises(ValueError, match="held-out"):
        from leanlm.evolve.safety import refusal_examples
        refusal_examples(tok, sets.harmful_prompts(sets.HELDOUT)[:1])


def test_paired_bootstrap_interval():
    base, cand = [1] * 40, [1] * 30 + [0] * 10
    ci = paired_bootstrap(cand, base, seed=1)
    assert ci["diff"] == pytest.approx(-0.25) and ci["lo"] < -0.25 < ci["hi"] < 0
    same = paired_bootstrap(base, base)
    assert same["lo"] == same["hi"] == same["diff"] == 0
    with pytest.raises(ValueError):
        paired_bootstrap([1], [1, 0])


def test_token_kl_matches_torch_and_is_zero_on_itself():
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(3, 5, 11, generator=g), torch.randn(3, 5, 11, generator=g)
    ref = torch.nn.functional.kl_div(q.log_softmax(-1), p.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(token_kl(p, q), ref, rtol=1e-5, atol=1e-6)
    assert (token_kl(p, q) >= 0).all() and token_kl(p, p).abs().max() < 1e-6


def test_kl_to_reference_of_a_model_to_itself_is_zero():
    from leanlm.models import load

    model, tok = load("tiny-llama")
    other, _ = load("tiny-llama")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    texts = ["hello world, a short text", "another one that is a bit longer than the first"]
    assert kl_to_reference(model, model, tok, texts) == pytest.approx(0.0, abs=1e-6)
    assert kl_to_reference(other, model, tok, texts) > 1e-4


def test_kl_budget_lowers_the_learning_rate():
    assert controller.kl_lr_scale(None, 0.5)[0] == 1.0 and controller.kl_lr_scale(0.3, 0.0)[0] == 1.0
    assert controller.kl_lr_scale(0.1, 0.5)[0] == pytest.approx(0.8)
    assert controller.kl_lr_scale(0.6, 0.5)[0] == pytest.approx(0.1)      # floor


def test_safety_tune_flag_selects_the_issue_19_recipe():
    cfg = preset("smollm2-135m", safety_tune=True)
    assert cfg.safety_tune and cfg.refusal_n > 0 and cfg.safety_replay > 0 and cfg.strict_verify
    assert "addmix:3" in cfg.skills and cfg.shifted_skills and cfg.ppl2_corpus
    # retention by KL on text the second perplexity does not score
    assert cfg.retention_kl and cfg.lora_r > 0 and cfg.ppl2_corpus not in cfg.retention_corpus.split(",")
    with pytest.raises(ValueError, match="refusal-n"):
        dataclasses.replace(cfg, refusal_n=0)


def test_pass_at_k_estimator():
    from math import comb

    from leanlm.evolve.measure import pass_at_k

    for n, c, k in ((8, 0, 1), (8, 3, 1), (8, 3, 8), (8, 1, 4), (10, 5, 3)):
        assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8) and pass_at_k(8, 1, 8) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(8, 9, 1)
