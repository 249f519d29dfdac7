"""The server through the official openai client and raw HTTP: a real uvicorn on a free 127.0.0.1 port."""
import concurrent.futures as cf
import json
import threading
import time

import httpx
import openai
import pytest
import torch
from _serve_util import KEY, tiny_cfg, wait_for

from leanlm.serve.server import ServerThread


@pytest.fixture(scope="module")
def server():
    with ServerThread("tiny-llama", tiny_cfg(api_key=KEY, max_queue=16)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _auth():
    return {"Authorization": f"Bearer {KEY}"}


def _greedy_reference(server, prompt: str, n_tokens: int) -> str:
    backend = server.ctx.registry.current.backend
    model, text = backend.model, backend.text
    ids = torch.tensor([text.encode(prompt)])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_tokens,
                             do_sample=False, pad_token_id=0, eos_token_id=list(text.eos_ids))
    return text.decode(out[0, ids.shape[1]:].tolist())


def test_chat_and_completion_non_streaming(server, client):
    r = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "2+2?"}],
                                       max_tokens=12, temperature=0)
    assert r.model == "tiny-llama@base" and r.object == "chat.completion"
    assert r.choices[0].finish_reason in ("length", "stop") and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(server.ctx.registry.current.backend.text.chat(
        [{"role": "user", "content": "2+2?"}]))
    assert 1 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    c = client.completions.create(model="tiny-llama", prompt="abc def", max_tokens=20, temperature=0)
    assert c.choices[0].text == _greedy_reference(server, "abc def", 20)


def test_streaming_matches_non_streaming(client):
    kw = dict(model="tiny-llama", prompt="hello world", max_tokens=25, temperature=0.9, seed=3)
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert all(c.model == "tiny-llama@base" for c in chunks)
    assert chunks[-1].usage.completion_tokens == sum(1 for c in chunks if c.choices and c.choices[0].text) or \
        chunks[-1].usage.completion_tokens >= 1
    chat = list(client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "x"}],
                                               max_tokens=8, stream=True, temperature=0))
    assert chat[0].choices[0].delta.role == "assistant" and chat[-1].choices[0].finish_reason in ("length", "stop")


def test_n_seed_and_stop(client):
    kw = dict(model="tiny-llama", prompt="seed test", max_tokens=15, temperature=1.0, n=3, seed=11)
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]          # seeded: reproducible
    assert len({c.text for c in a.choices}) > 1                                 # choices differ
    # char tokenizer: one token a character, except a sampled <pad> / <unk>, which decodes to nothing; a choice
    # that ran to the length limit used exactly max_tokens tokens
    ran_out = [c for c in a.choices if c.finish_reason == "length"]
    stopped = sum(len(c.text) for c in a.choices if c.finish_reason == "stop")
    assert all(len(c.text) <= 15 for c in a.choices)
    assert 15 * len(ran_out) + stopped <= a.usage.completion_tokens <= 15 * 3
    full = client.completions.create(model="tiny-llama", prompt="stop test", max_tokens=30, temperature=1.0,
                                     seed=5).choices[0].text
    stop = full[6:8]
    cut = client.completions.create(model="tiny-llama", prompt="stop test", max_tokens=30, temperature=1.0,
                                    seed=5, stop=[stop])
    assert cut.choices[0].text == full[:full.find(stop)] and cut.choices[0].finish_reason == "stop"


def test_concurrent_requests_are_batched_and_each_matches_its_own_reference(server, client):
    prompts = ["one", "two two", "three three three", "four", "five five", "six", "seven", "eight!"]
    steps_before = server.ctx.scheduler.steps
    with cf.ThreadPoolExecutor(8) as ex:
        outs = list(ex.map(lambda p: client.completions.create(model="tiny-llama", prompt=p, max_tokens=30,
                                                               temperature=0).choices[0].text, prompts))
    assert outs == [_greedy_reference(server, p, 30) for p in prompts]
    assert server.ctx.scheduler.steps - steps_before < 8 * 30 * 0.75       # far fewer steps than 8 alone


def test_models_health_metrics(server, client):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "tiny-llama" and "tiny-llama@base" in ids
    assert httpx.get(server.url + "/health").json()["status"] == "ok"          # no key needed
    text = httpx.get(server.url + "/metrics", headers=_auth()).text
    assert 'leanlm_served_version{role="current",version="tiny-llama@base"} 1' in text
    assert "leanlm_request_seconds_bucket" in text and "leanlm_completion_tokens_total" in text


@pytest.mark.parametrize("body,status,needle", [
    (b"{not json", 400, "not valid JSON"),
    (json.dumps({"model": "nope", "prompt": "x"}).encode(), 404, "does not exist"),
    (json.dumps({"model": "tiny-llama@gen-7", "prompt": "x"}).encode(), 404, "does not exist"),
    (json.dumps({"model": "tiny-llama", "prompt": "x", "max_tokens": -5}).encode(), 400, "at least 1"),
    (json.dumps({"model": "tiny-llama", "prompt": "x", "max_tokens": 10**9}).encode(), 400, "exceeds"),
    (json.dumps({"model": "tiny-llama", "prompt": "y" * 500}).encode(), 400, "prompt is 500 tokens"),
    (json.dumps({"model": "tiny-llama", "prompt": "x", "n": 99}).encode(), 400, "n 99 exceeds"),
    (json.dumps({"model": "tiny-llama", "prompt": "x", "temperature": 7}).encode(), 400, "temperature"),
    (json.dumps({"model": "tiny-llama"}).encode(), 400, "prompt"),
    (json.dumps({"model": "tiny-llama", "prompt": "x" * (2 << 20)}).encode(), 413, "exceeds"),
])
def test_bad_input_gets_openai_error_and_server_keeps_serving(server, client, body, status, needle):
    r = httpx.post(server.url + "/v1/completions", content=body, headers={**_auth(), "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and set(err) == {"message", "type", "param", "code"}
    assert client.completions.create(model="tiny-llama", prompt="ok", max_tokens=2).choices[0].text is not None


def test_wrong_or_missing_key_is_401_except_health(server):
    for headers in ({}, {"Authorization": "Bearer wrong-key-000"}):
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/completions"), ("GET", "/metrics"),
                             ("POST", "/admin/promote")):
            r = httpx.request(method, server.url + path, headers=headers, json={"model": "tiny-llama", "prompt": "x"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="bad-key-0000", max_retries=0).models.list()


def test_client_that_vanishes_frees_its_slot(server, client):
    sched = server.ctx.scheduler
    assert client.completions.create(model="tiny-llama", prompt="warm", max_tokens=1).choices
    backend = server.ctx.registry.current.backend
    step = backend.step

    def paced_step(*a, **k):      # 5 ms a token: 200 tokens take >= 1 s, however fast the tiny model is,
        time.sleep(0.005)         # so the bound below leaves the disconnect check ~0.75 s to notice
        return step(*a, **k)

    backend.step = paced_step
    try:
        with httpx.Client(timeout=30) as h:
            with h.stream("POST", server.url + "/v1/completions", headers=_auth(),
                          json={"model": "tiny-llama", "prompt": "long", "max_tokens": 200, "stream": True}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and '"text"' in line:
                        break                               # one token arrived; now hang up
        steps = sched.steps
        assert wait_for(lambda: sched.stats()["running"] == 0, timeout=10)
        assert sched.steps - steps < 150                     # stopped long before its 200 tokens
    finally:
        backend.step = step
    # greedy: a sampled first token may be EOS (0 tokens, a flaky failure seen under load), the argmax is fixed
    after = client.completions.create(model="tiny-llama", prompt="after", max_tokens=3, temperature=0)
    assert after.usage.completion_tokens >= 1


def test_full_queue_is_429(server):
    cfg = tiny_cfg(max_batch=1, max_queue=1)
    with ServerThread("tiny-llama", cfg) as s:
        results, release = [], threading.Event()
        r = httpx.post(s.url + "/v1/completions", json={"model": "tiny-llama", "prompt": "warm", "max_tokens": 1})
        assert r.status_code == 200                         # the version is loaded: its backend can be held
        backend = s.ctx.registry.current.backend
        prefill, in_prefill = backend.prefill, threading.Event()

        def held_prefill(*a, **k):    # the first request's prefill waits for the test: it holds the only slot
            in_prefill.set()          # however short the tiny model's reply would be (EOS included)
            release.wait(30)
            return prefill(*a, **k)

        backend.prefill = held_prefill
        try:
            def post(prompt, n):
                results.append(httpx.post(s.url + "/v1/completions", timeout=60,
                                          json={"model": "tiny-llama", "prompt": prompt, "max_tokens": n,
                                                "temperature": 0}))

            running = threading.Thread(target=post, args=("a", 20))
            running.start()
            assert in_prefill.wait(10)
            waiting = threading.Thread(target=post, args=("b", 2))
            waiting.start()
            assert wait_for(lambda: s.ctx.scheduler.stats()["waiting"] == 1, timeout=10)
            r = httpx.post(s.url + "/v1/completions", json={"model": "tiny-llama", "prompt": "c", "max_tokens": 2})
            assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
            r = httpx.post(s.url + "/admin/rollback")                  # no --api-key: admin routes are closed
            assert r.status_code == 403 and "--api-key" in r.json()["error"]["message"]
        finally:
            release.set()
        running.join(60)
        waiting.join(60)
        assert [x.status_code for x in results] == [200, 200]
