"""Versions of an evolve run: follow and swap under traffic, addressable generations, canary, promote,
rollback, the ledger, and freeing old weights."""
import json
import threading

import httpx
import openai
import pytest
import torch
from _serve_util import KEY, tiny_cfg, tiny_run, wait_for, write_generation

from leanlm.serve.server import ServerThread


def _ref(backend, prompt: str, n: int) -> str:
    ids = torch.tensor([backend.text.encode(prompt)])
    with torch.no_grad():
        out = backend.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                     do_sample=False, pad_token_id=0, eos_token_id=list(backend.text.eos_ids))
    return backend.text.decode(out[0, ids.shape[1]:].tolist())


def _stream(url: str, body: dict, headers: dict | None = None) -> tuple[list[str], str]:
    models, text = [], ""
    with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, headers=headers or {},
                      timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                models.append(chunk["model"])
                text += "".join(c["text"] for c in chunk["choices"])
    return models, text


def test_follow_swaps_atomically_in_flight_requests_finish_on_their_version(tmp_path):
    run = tiny_run(tmp_path, gens=2)                           # gen 0 (the spec) and gen 1
    with ServerThread(str(run), tiny_cfg(follow=True)) as s:
        reg = s.ctx.registry
        assert reg.current.id == "tinyrun@gen-1"
        gen1 = reg.current.backend
        expected, expected_after = _ref(gen1, "in flight", 150), _ref(gen1, "after", 10)
        out = {}
        t = threading.Thread(target=lambda: out.update(r=_stream(s.url, {"model": "tinyrun", "prompt": "in flight",
                                                                         "max_tokens": 150, "temperature": 0})))
        t.start()
        assert wait_for(lambda: s.ctx.scheduler.stats()["running"] == 1)
        write_generation(run, 2, accepted=False)               # rolled back by the gate: never served
        write_generation(run, 3)
        assert wait_for(lambda: reg.current is not None and reg.current.id == "tinyrun@gen-3", timeout=30)
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        new = c.completions.create(model="tinyrun", prompt="after", max_tokens=10, temperature=0)
        assert new.model == "tinyrun@gen-3"
        assert new.choices[0].text == _ref(reg.current.backend, "after", 10)
        t.join(120)
        models, text = out["r"]
        assert set(models) == {"tinyrun@gen-1"} and text == expected   # finished on gen 1's weights
        assert wait_for(lambda: "tinyrun@gen-1" not in reg.snapshot()["loaded"])   # old weights freed
        with pytest.raises(openai.NotFoundError, match="rolled back"):
            c.completions.create(model="tinyrun@gen-2", prompt="x", max_tokens=2)
        pinned = c.completions.create(model="tinyrun@gen-1", prompt="after", max_tokens=10, temperature=0)
        assert pinned.model == "tinyrun@gen-1" and pinned.choices[0].text == expected_after
        ledger = [json.loads(line) for line in (run / "serve-ledger.jsonl").read_text().splitlines()]
        live = [e for e in ledger if e["event"] == "live"]
        assert [e["version"] for e in live] == ["tinyrun@gen-1", "tinyrun@gen-3"]
        assert live[1]["parent"] == 2 and live[1]["gate"]["headline"] == pytest.approx(0.3)
        assert live[1]["previous"] == "tinyrun@gen-1" and "accepted" in live[1]["reason"]
        assert any(e["event"] == "blocked" and e["tag"] == "gen-2" for e in ledger)


def test_canary_sticky_per_user_then_promote_and_rollback(tmp_path):
    run = tiny_run(tmp_path, gens=2)
    with ServerThread(str(run), tiny_cfg(follow=True, canary=0.3, api_key=KEY)) as s:
        reg = s.ctx.registry
        write_generation(run, 2)
        assert wait_for(lambda: reg.canary is not None, timeout=30)
        assert reg.current.id == "tinyrun@gen-1" and reg.canary.id == "tinyrun@gen-2"
        c = openai.OpenAI(base_url=s.url + "/v1", api_key=KEY, max_retries=0)
        seen = {}
        for u in range(40):
            got = {c.completions.create(model="tinyrun", prompt="x", max_tokens=1, user=f"user{u}").model
                   for _ in range(2)}
            assert len(got) == 1                               # sticky: a user always meets the same version
            seen[f"user{u}"] = got.pop()
        share = sum(v == "tinyrun@gen-2" for v in seen.values()) / len(seen)
        assert 0.1 <= share <= 0.55                            # 30% canary, 40 users
        auth = {"Authorization": f"Bearer {KEY}"}
        assert httpx.post(s.url + "/admin/promote").status_code == 401
        r = httpx.post(s.url + "/admin/promote", headers=auth)
        assert r.status_code == 200 and r.json()["state"]["current"] == "tinyrun@gen-2"
        assert c.completions.create(model="tinyrun", prompt="x", max_tokens=1, user="user0").model == "tinyrun@gen-2"
        r = httpx.post(s.url + "/admin/rollback", headers=auth)
        assert r.status_code == 200 and r.json()["state"]["current"] == "tinyrun@gen-1"
        assert c.completions.create(model="tinyrun", prompt="x", max_tokens=1).model == "tinyrun@gen-1"
        with pytest.raises(openai.NotFoundError, match="rolled back"):
            c.completions.create(model="tinyrun@gen-2", prompt="x", max_tokens=1)
        r = httpx.post(s.url + "/admin/rollback", headers=auth, json={"version": "gen-9"})
        assert r.status_code == 404
        events = [e["event"] for e in httpx.get(s.url + "/admin/ledger", headers=auth).json()["data"]]
        assert events[-4:] == ["canary", "promote", "rollback", "rollback-to"]


def test_follow_waits_for_a_run_without_generations(tmp_path):
    run = tiny_run(tmp_path, gens=0)
    with ServerThread(str(run), tiny_cfg(follow=True)) as s:
        r = httpx.post(s.url + "/v1/completions", json={"model": "tinyrun", "prompt": "x", "max_tokens": 2})
        assert r.status_code == 503 and "no version" in r.json()["error"]["message"]
        write_generation(run, 0)
        assert wait_for(lambda: s.ctx.registry.current is not None, timeout=30)
        r = httpx.post(s.url + "/v1/completions", json={"model": "tinyrun", "prompt": "x", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["model"] == "tinyrun@gen-0"


def test_memory_is_bounded_across_swaps(tmp_path):
    run = tiny_run(tmp_path, gens=1)
    with ServerThread(str(run), tiny_cfg(follow=True, max_loaded=2)) as s:
        reg = s.ctx.registry
        for g in range(1, 7):
            write_generation(run, g, seed=g % 2)
            assert wait_for(lambda: reg.current.id == f"tinyrun@gen-{g}", timeout=30)
            httpx.post(s.url + "/v1/completions", json={"model": f"tinyrun@gen-{g - 1}", "prompt": "x",
                                                        "max_tokens": 2}).raise_for_status()
            assert wait_for(lambda: len(reg.snapshot()["loaded"]) <= 2, timeout=5)
        assert reg.swaps == 7


def test_cli_registers_serve():
    from leanlm.cli import build_parser

    args = build_parser().parse_args(["serve", "tiny-llama", "--port", "0", "--canary", "0.2", "--follow"])
    assert args.verb == "serve" and args.canary == 0.2 and args.follow is True
    from leanlm.config import from_args
    from leanlm.serve.config import ServeConfig

    assert from_args(ServeConfig, args).host == "127.0.0.1"
    with pytest.raises(ValueError, match="canary"):
        ServeConfig(canary=1.5)


def test_evolve_serve_flag_follows_the_run_it_creates(tmp_path):
    import argparse

    from leanlm.cli import build_parser
    from leanlm.evolve.cli import _serve
    from leanlm.evolve.config import EvolveConfig

    assert build_parser().parse_args(["evolve", "tiny-add", "--out", "x", "--serve"]).serve is True
    run = tmp_path / "evo"
    server = _serve(argparse.Namespace(serve=True, serve_port=0), str(run), EvolveConfig(spec="tiny-llama"))
    try:
        assert (run / "run.json").is_file() and server.url.startswith("http://127.0.0.1:")
        write_generation(run, 0)
        assert wait_for(lambda: server.ctx.registry.current is not None, timeout=30)
        r = httpx.post(server.url + "/v1/completions", json={"model": "evo", "prompt": "x", "max_tokens": 2})
        assert r.json()["model"] == "evo@gen-0"
    finally:
        server.__exit__(None, None, None)


def test_versions_load_on_a_lower_priority_thread():
    """A swap's load must not compete with the decode loop at equal priority (ServeConfig.load_nice)."""
    import os

    from leanlm.serve.versions import Registry, Version

    seen = {}

    def loader(source):
        seen["thread"] = threading.current_thread().name
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        if source == "broken":
            raise RuntimeError("unreadable weights")
        return object()

    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    reg = Registry("m", loader, load_nice=5)
    reg.install(Version(id="m@gen-1", tag="gen-1", source="x", generation=1), "test")
    assert seen["thread"].startswith("leanlm-load") and seen["thread"] != threading.current_thread().name
    assert seen["nice"] == min(19, base + 5)
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base   # the caller is untouched
    assert reg.current is not None and reg.current.tag == "gen-1"
    with pytest.raises(RuntimeError, match="unreadable weights"):              # a failed load reaches the caller
        reg.install(Version(id="m@gen-2", tag="gen-2", source="broken", generation=2), "test")
    assert reg.current.tag == "gen-1"
    with pytest.raises(ValueError, match="load_nice"):
        tiny_cfg(load_nice=25)
