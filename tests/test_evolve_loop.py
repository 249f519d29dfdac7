"""The whole loop on tiny models: two generations end to end, and resume after an interrupted generation."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from leanlm.evolve import lineage, loop
from leanlm.evolve.config import EvolveConfig, Recipe

TINY = EvolveConfig(
    spec="tiny-llama", recipe=Recipe.TINYADD, skills=("add:1",), retention_skills=(), generations=2, budget=0,
    problems=80, samples=3, temperature=0.7, steps=20, batch_size=64, lr=1e-3, lora_r=0, replay=100,
    adversarial=0.0, probe_n=20, heldout_n=20, gen_batch=256, judge_n=0, mastery=0.98, seed_digits=1,
    target_digits=2, seed_examples=100, seed_steps=400, seed_lr=3e-3, max_jump=1, min_vote=0.5, progress=False,
    advance=0.5, max_scale=2.0, exact_share=0.5, new_share=0.5)


def _strip(recs: list[dict]) -> list[dict]:
    """Lineage minus what may differ between two runs of one config: wall times, paths, codec timing."""
    out = []
    for r in recs:
        r = {k: v for k, v in r.items() if k not in ("wall_s", "delta", "seconds")}
        out.append({**r, "delta_ratio": (recs[r["generation"]].get("delta") or {}).get("ratio")})
    return out


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("evolve") / "run"
    seen = []
    result = loop.run(TINY, out, on_generation=seen.append)
    return out, result, seen


def test_two_generation_loop_writes_a_complete_run(full_run):
    out, result, seen = full_run
    recs = lineage.records(out)
    assert [r["generation"] for r in recs] == [0, 1, 2] and [r["generation"] for r in seen] == [0, 1, 2]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in rows] == [0, 1, 2]
    assert (out / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the seed model learned 1-digit reversed addition from ground truth (chance is ~0)
    assert recs[0]["metrics"]["heldout"]["tinyadd:1"] >= 0.25, recs[0]["metrics"]
    # generation 1 labelled 2-digit problems itself: data saved as JSONL, label precision measured
    assert 2 in recs[1]["plan"]["targets"] and recs[1]["data"]["self_labelled"] > 0
    assert set(recs[1]["probe"]) == {"1", "2"}     # the frontier (seed length) is probed too: it weights a hold
    by_length = recs[1]["data"]["by_length"]       # [asked, kept, right] per length
    assert sum(v[1] for v in by_length.values()) == recs[1]["data"]["self_labelled"]
    assert all(v[0] >= v[1] >= v[2] for v in by_length.values())
    data = lineage.read_rows(lineage.gen_dir(out, 1) / "data.jsonl")
    assert (lineage.gen_dir(out, 1) / "data.jsonl.gz").is_file()             # stored compressed
    assert len(data) == recs[1]["data"]["self_labelled"] and "prompt" in data[0]
    for r in recs[1:]:
        assert r["parent"] in (0, 1) and r["decisions"] and isinstance(r["accepted"], bool)
        d = lineage.gen_dir(out, r["generation"])
        stored = (d / "model").is_dir() or ((d / "delta.json").is_file() and (d / "model.delta").exists())
        assert stored == r["accepted"]
    # the merged model of an accepted generation loads with plain transformers
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(lineage.gen_dir(out, 0) / "model")
    assert sum(p.numel() for p in m.parameters()) > 0
    assert result["generations"] == 2 and result["final"]["retention"] is not None


def test_older_generations_restore_from_deltas(full_run, tmp_path):
    from leanlm.fileio import sha256_file

    out, _, _ = full_run
    recs = lineage.records(out)
    older = [r for r in recs if r["accepted"] and not (lineage.gen_dir(out, r["generation"]) / "model").is_dir()]
    if not older:
        pytest.skip("no older accepted generation was stored as a delta (lossless codec missing or all kept)")
    for r in older:
        target = tmp_path / f"gen{r['generation']}"
        lineage.restore_model(out, recs, r["generation"], target)
        for name, sha in r["files"].items():
            if name.startswith("model/"):
                assert sha256_file(target / name.split("/", 1)[1]) == sha, name
        assert r["delta"]["ratio"] < 1.0


# A run in its own process, killed with SIGKILL once generation 2 is in the phase named on the command line:
# the trainer (inside ``train``) or the sampler (inside the parent sampler's ``answers``). The hook only
# writes a marker and carries on with the real work; the test kills the process when it sees the marker.
_KILLED_RUN = """
import sys, torch
sys.path.insert(0, sys.argv[4])
from test_evolve_loop import TINY
from leanlm.evolve import lineage, loop, sampler
phase, out, marker = sys.argv[1:4]
torch.set_num_threads(1)

def mark(real):
    def wrapped(*a, **k):
        if len(lineage.records(out)) == 2:          # generation 2 is running
            open(marker, "w").write(phase)
        return real(*a, **k)
    return wrapped

if phase == "train":
    loop.train = mark(loop.train)
else:
    sampler.TransformersSampler.answers = mark(sampler.TransformersSampler.answers)
loop.run(TINY, out)
"""


@pytest.mark.parametrize("phase", ["train", "sample"])
def test_a_killed_trainer_or_sampler_resumes_to_the_same_result(full_run, tmp_path, phase):
    """SIGKILL of the process in generation 2's training or sampling; ``resume`` gives the same lineage
    and final metrics as the uninterrupted run, and clears what the kill left half-written."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    ref_out, ref_result, _ = full_run
    out, marker = tmp_path / "run", tmp_path / "marker"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, phase, str(out), str(marker),
                             str(Path(__file__).parent)], env=env)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), f"generation 2 never reached {phase} (exit {proc.poll()})"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL        # killed, not finished
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [r["generation"] for r in lineage.records(out)] == [0, 1]   # finished work kept
    (out / ".gen-002.stale.tmp").mkdir(exist_ok=True)                     # as a kill mid-write leaves it
    torch.set_num_threads(1)
    result = loop.resume(out)
    assert not list(out.glob(".gen-*.tmp"))
    assert _strip(lineage.records(out)) == _strip(lineage.records(ref_out))
    assert result["final"] == ref_result["final"] and result["final_heldout"] == ref_result["final_heldout"]


def test_run_dir_refuses_another_config(full_run):
    out, _, _ = full_run
    with pytest.raises(lineage.RunDirError):
        lineage.init_run(out, dataclasses.replace(TINY, seed=1))


def test_chat_recipe_plumbing_with_lora(tmp_path, monkeypatch):
    """One chat-recipe generation on tiny-llama: probe, plan, adversarial + fresh problems, sampling, judge,
    LoRA training with PCGrad against corpus retention, merge, gate (ppl, refusals), adapter + merged model.
    A random tiny model answers nothing right, so the verifier is replaced by one that accepts about half of
    the answers (by length parity), which also yields preference pairs for the DPO steps."""
    torch.set_num_threads(1)
    monkeypatch.setattr(loop, "verify", lambda p, o: bool(o.strip()) and len(o) % 2 == 0)
    cfg = EvolveConfig(spec="tiny-llama", skills=("add:1", "sort:1"), headline_skills=("add:1",),
                       retention_skills=("mul:1",), generations=1,
                       budget=0, problems=8, samples=2, steps=3, batch_size=4, lora_r=4, replay=4, probe_n=4,
                       heldout_n=4, max_new_tokens=6, ppl_tokens=600, judge_n=4, ppl_tolerance=100.0,
                       refusal_tolerance=1.0, retention_tolerance=1.0, propose=2, dpo_steps=2, progress=False)
    out = tmp_path / "chat"
    result = loop.run(cfg, out)
    recs = lineage.records(out)
    g1 = recs[1]
    assert recs[0]["refused_at_gen0"] == recs[0]["metrics"]["refused"]
    assert g1["accepted"], g1["decisions"]
    assert g1["data"]["sft"] > 0 and g1["train"]["steps"] == 3 and g1["train"]["loss_ret_first"] is not None
    assert g1["judge"]["n"] > 0 and 0 <= g1["judge"]["agreement"] <= 1
    assert g1["data"]["pairs"] > 0 and g1["train"]["dpo"] is not None   # the RLAIF path ran
    assert len(lineage.read_rows(lineage.gen_dir(out, 1) / "pairs.jsonl")) == g1["data"]["pairs"]
    assert sum(g1["plan"]["problems"].values()) == 8 and g1["metrics"]["ppl"] > 1
    d = lineage.gen_dir(out, 1)
    assert (d / "adapter" / "adapter_config.json").is_file() and (d / "model" / "config.json").is_file()
    assert any("weight" in line for line in g1["decisions"])
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(d / "model")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert result["accepted"] == 1
