"""The code recipe through the real loop on tiny-llama: two generations end to end, resume after a kill,
rollback when nothing passes, the CLI flag and the config's checks.

A random tiny model writes no working code, so the solver used for training is the real model's sampled
replies with, on every other problem, its first sample replaced by the problem's reference solution (the
"half oracle"). Everything after the replies is real: the sandboxed verifier, the learnability window,
the adversarial round, LoRA training, the gate (held-out code problems scored on the real model's greedy
replies, arithmetic retention, perplexity, refusals), lineage, deltas and resume.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from leanlm.eval import codetasks as ct
from leanlm.eval.generate import format_prompt
from leanlm.eval.sandbox import Limits, run_many
from leanlm.evolve import code, coderun, lineage, loop
from leanlm.evolve.config import CODE, EvolveConfig, Recipe, preset

CFG = EvolveConfig(spec="tiny-llama", recipe=Recipe.CODE, skills=("digits:1", "rle:1"), headline_skills=(),
                   retention_skills=("add:1",), generations=2, budget=0, problems=6, samples=2, steps=3,
                   batch_size=2, lora_r=4, replay=4, heldout_n=1, max_new_tokens=12, gen_batch=8, ppl_tokens=600,
                   judge_n=0, propose=2, ppl_tolerance=100.0, refusal_tolerance=1.0, retention_tolerance=1.0,
                   progress=False)
REAL_SOLVE = coderun.solve_and_verify


def _fence(src: str) -> str:
    return "```python\n" + src + "```"


def half_oracle(seen: list):
    def solve(model, tok, cfg, problems, k, seed):
        samples, _ = REAL_SOLVE(model, tok, cfg, problems, k, seed)          # the real model's sampled replies
        samples = [[_fence(p.reference) if j == 0 and i % 2 == 0 else s for j, s in enumerate(ss)]
                   for i, (p, ss) in enumerate(zip(problems, samples))]
        seen.append((seed, problems, samples))
        return samples, code.verify(problems, samples)                     # the real sandboxed verifier
    return solve


def _strip(recs: list[dict]) -> list[dict]:
    """Lineage minus what may differ between two runs of one config: wall times, codec timing."""
    return [{k: v for k, v in r.items() if k not in ("wall_s", "delta", "seconds")} for r in recs]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    torch.set_num_threads(1)
    out, seen = tmp_path_factory.mktemp("code") / "run", []
    mp = pytest.MonkeyPatch()
    mp.setattr(coderun, "solve_and_verify", half_oracle(seen))
    try:
        result = loop.run(CFG, out)
    finally:
        mp.undo()
    return out, result, seen


def test_two_code_generations_through_the_loop(full_run):
    out, result, _ = full_run
    recs = lineage.records(out)
    assert [r["generation"] for r in recs] == [0, 1, 2]
    for r in recs:
        m = r["metrics"]
        for key in ("score", "score_strict", "transfer", "transfer_strict", "ppl", "refusal_rate", "retention"):
            assert m[key] is not None, key
        assert 0 <= m["score_strict"] <= 1 and 0 <= m["score"] <= 1
        # held-out problems: the trained skills and the held-out families, strict and repaired
        assert set(m["heldout"]) == set(m["heldout_strict"]) == {"digits:1", "rle:1", "radix:1", "grid:1",
                                                                 "interleave:1", "mirror:1"}
    for r in recs[1:]:
        assert isinstance(r["accepted"], bool) and r["parent"] in (0, 1)
        assert any(d.startswith(("ok: score", "FAIL: score")) for d in r["decisions"])      # the gate decided
        d = r["data"]
        assert d["fresh"] + d["adversarial"] + d["proposed"] == d["problems"] and d["adversarial"] >= 1
        assert d["sft"] > 0 and d["solved_all"] == 0
        assert sum(r["plan"]["problems"].values()) == CFG.problems - r["plan"]["adversarial"]
        stored = lineage.gen_dir(out, r["generation"])
        has_model = (stored / "model").is_dir() or (stored / "model.delta").exists()
        assert has_model == r["accepted"] and (stored / "adapter").is_dir() == r["accepted"]
    assert recs[2]["data"]["replay"] > 0                                     # generation 1's data replayed
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["generation"] for x in rows] == [0, 1, 2] and "score_strict" in rows[0]
    assert result["generations"] == 2 and set(result["final"]) >= {"score", "ppl", "retention"}


def test_only_full_passes_of_learnable_problems_become_training_data(full_run, tiny):
    out, _, seen = full_run
    _, tok = tiny
    by_prompt = {format_prompt(tok, p.chat): p for _, probs, _ in seen for p in probs}
    for g in (1, 2):
        data = lineage.read_examples(lineage.gen_dir(out, g) / "data.jsonl")
        assert data, f"generation {g} trained on nothing"
        probs = [by_prompt[e.prompt] for e in data]
        verdicts = run_many([(ct.program(p, e.completion, "strict"), list(p.tests)) for p, e in zip(probs, data)],
                            Limits(timeout_s=4.0))
        assert all(v.full for v in verdicts)           # every example is a program that passes hidden tests too
        assert all("```" not in e.completion for e in data)                  # stored as bare code
    # generation 1 (seeds 1, 1 + 3, 1 + 11: fresh, adversarial, proposed): the problems with an oracle reply
    # have solve rate 1/2 and give one example each; the others (rate 0) give nothing
    calls = [probs for seed, probs, _ in seen if seed in (1, 4, 12)]
    with_oracle = sum((len(probs) + 1) // 2 for probs in calls)
    d = lineage.records(out)[1]["data"]
    assert 0 < with_oracle < d["problems"] == sum(map(len, calls))
    assert d["sft"] == d["learnable"] == with_oracle and d["solved_none"] == d["problems"] - with_oracle


def test_resume_after_a_kill_repeats_the_generation(full_run, tmp_path, monkeypatch):
    ref_out, ref_result, _ = full_run
    out, calls, real_train = tmp_path / "run", [], coderun.train
    monkeypatch.setattr(coderun, "solve_and_verify", half_oracle([]))

    def killed_in_generation_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            (out / ".gen-002.stale.tmp").mkdir()         # what a SIGKILL leaves behind
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(coderun, "train", killed_in_generation_2)
    with pytest.raises(KeyboardInterrupt):
        loop.run(CFG, out)
    assert [r["generation"] for r in lineage.records(out)] == [0, 1]
    monkeypatch.setattr(coderun, "train", real_train)
    result = loop.resume(out)
    assert not list(out.glob(".gen-*.tmp"))
    assert _strip(lineage.records(out)) == _strip(lineage.records(ref_out))
    assert result["final"] == ref_result["final"] and result["final_heldout"] == ref_result["final_heldout"]


def test_a_generation_with_nothing_passing_rolls_back(tmp_path):
    """The real tiny model alone: no reply passes, so there is no training data and the gate rolls back."""
    torch.set_num_threads(1)
    cfg = dataclasses.replace(CFG, generations=1, propose=0, problems=4)
    loop.run(cfg, tmp_path / "run")
    g0, g1 = lineage.records(tmp_path / "run")
    assert not g1["accepted"] and g1["data"]["sft"] == 0 and g1["data"]["sample_pass"] == 0.0
    assert "FAIL: no fully passing sample of a learnable problem to train on" in g1["decisions"]
    assert not (lineage.gen_dir(tmp_path / "run", 1) / "model").exists()
    assert g1["course"]["rollbacks"] == 1 and g1["course"]["lr_scale"] == 0.5 * g0["course"]["lr_scale"]
    assert g1["skills"] == list(cfg.skills)


def test_cli_recipe_code_uses_the_code_preset(tmp_path):
    from leanlm.cli import main

    out = tmp_path / "cli"
    argv = ["evolve", "tiny-llama", "--recipe", "code", "--out", str(out), "--generations", "0", "--heldout-n", "1",
            "--max-new-tokens", "8", "--ppl-tokens", "600", "--skills", "rle:1", "--no-progress",
            "--json", str(tmp_path / "r.json")]
    assert main(argv) == 0
    cfg = lineage.load_config(out)
    assert cfg.recipe is Recipe.CODE and cfg.skills == ("rle:1",) and cfg.problems == CODE["problems"]
    assert "score_strict" in lineage.records(out)[0]["metrics"]
    assert json.loads((tmp_path / "r.json").read_text())["results"]["generations"] == 0


def test_code_config_checks_its_skills():
    assert preset("smollm2-135m", recipe="code").recipe is Recipe.CODE
    assert preset("smollm2-135m").recipe is Recipe.CHAT                      # the chat preset is unchanged
    with pytest.raises(ValueError, match="unknown code family 'add'"):
        EvolveConfig(recipe=Recipe.CODE, skills=("add:2",))
    with pytest.raises(ValueError, match="level"):
        EvolveConfig(recipe=Recipe.CODE, skills=("rle:7",))
    with pytest.raises(ValueError, match="safety"):
        preset("smollm2-135m", safety_tune=True, recipe="code")
