"""FastAPI routes: validate into the protocol schemas, pick a version, enqueue, stream. No model work here.

Every error leaves in OpenAI's JSON shape (``{"error": {"message", "type", "param", "code"}}``) with a 4xx
for what the client got wrong and a 5xx for what the server cannot do now.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import protocol as P
from .config import ServeConfig
from .metrics import Metrics
from .scheduler import GenRequest, QueueFull, SamplingParams, Scheduler
from .versions import Registry

log = logging.getLogger(__name__)
OPEN_ROUTES = ("/health",)


@dataclass
class ServerContext:
    cfg: ServeConfig
    registry: Registry
    scheduler: Scheduler
    metrics: Metrics
    follower: Any = None


class Channel:
    """Events from the scheduler thread into one request's event loop."""

    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

    def put(self, event: tuple) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:           # the loop closed (server shutdown): nobody is left to receive it
            log.debug("dropped an event for a closed event loop")


def _error(e: P.APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def _validation_message(e: ValidationError) -> tuple[str, str | None]:
    err = e.errors()[0]
    where = ".".join(str(x) for x in err["loc"])
    return f"invalid request: {where}: {err['msg']}" + (f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1
                                                       else ""), where or None


async def _read_json(request: Request, limit: int) -> Any:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise P.APIError(413, f"request body exceeds {limit} bytes", code="body_too_large")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise P.APIError(400, f"the request body is not valid JSON: {e}", code="malformed_json") from e


def create_app(ctx: ServerContext) -> FastAPI:
    cfg, registry, scheduler, metrics = ctx.cfg, ctx.registry, ctx.scheduler, ctx.metrics
    app = FastAPI(title="leanlm serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        if cfg.api_key and path not in OPEN_ROUTES:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {cfg.api_key}".encode()):
                metrics.inc("leanlm_errors_total", help_="requests refused, by status", status="401")
                return _error(P.APIError(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                                         type_="authentication_error", code="invalid_api_key"))
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > cfg.max_body_bytes:
            return _error(P.APIError(413, f"request body of {size} bytes exceeds {cfg.max_body_bytes}",
                                     code="body_too_large"))
        return await call_next(request)

    @app.exception_handler(P.APIError)
    async def api_error(request: Request, e: P.APIError):
        metrics.inc("leanlm_errors_total", help_="requests refused, by status", status=str(e.status))
        return _error(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return _error(P.APIError(e.status_code, f"{request.method} {request.url.path}: {e.detail}"))

    @app.get("/health")
    async def health():
        snap = registry.snapshot()
        return {"status": "ok" if snap["current"] else "starting", "current": snap["current"]}

    @app.get("/v1/models")
    async def models():
        snap = registry.snapshot()
        cards = [P.model_card(registry.name, 0, current=snap["current"], canary=snap["canary"])]
        cards += [P.model_card(v.id, v.created, generation=v.generation, parent=v.parent, gate=v.metrics)
                  for v in registry.listing()]
        return {"object": "list", "data": cards}

    @app.get("/metrics")
    async def prometheus():
        snap, st = registry.snapshot(), scheduler.stats()
        gauges = {"leanlm_served_version": [({"version": snap["current"], "role": "current"}, 1)] if snap["current"]
                  else [],
                  "leanlm_running_sequences": [({}, st["running"])], "leanlm_waiting_requests": [({}, st["waiting"])],
                  "leanlm_loaded_versions": [({}, len(snap["loaded"]))], "leanlm_swaps": [({}, snap["swaps"])]}
        for k, v in scheduler.counts.items():
            gauges[f"leanlm_scheduler_{k}"] = [({}, v)]
        if snap["canary"]:
            gauges["leanlm_served_version"].append(({"version": snap["canary"], "role": "canary"}, 1))
        return PlainTextResponse(metrics.render(gauges), media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await _generate(ctx, request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _generate(ctx, request, chat=False)

    @app.get("/admin/ledger")
    async def ledger():
        return {"object": "list", "data": registry.ledger.entries, "state": registry.snapshot()}

    @app.post("/admin/promote")
    async def promote(request: Request):
        tag = await _admin_tag(request, registry)
        entry = await run_in_threadpool(registry.promote, tag)
        return {"entry": entry, "state": registry.snapshot()}

    @app.post("/admin/rollback")
    async def rollback(request: Request):
        tag = await _admin_tag(request, registry)
        entry = await run_in_threadpool(registry.rollback, tag)
        return {"entry": entry, "state": registry.snapshot()}

    return app


async def _admin_tag(request: Request, registry: Registry) -> str | None:
    if not request.app.state.ctx.cfg.api_key:
        raise P.APIError(403, "admin routes change what is served; start the server with --api-key to use them",
                         type_="permission_error", code="admin_needs_api_key")
    body = await request.body()
    try:
        doc = json.loads(body) if body.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise P.APIError(400, f"the request body is not valid JSON: {e}", code="malformed_json") from e
    if not isinstance(doc, dict):
        raise P.APIError(400, "admin body must be a JSON object like {\"version\": \"gen-3\"}")
    version = doc.get("version")
    if version is None:
        return None
    return registry.parse(version if "@" in str(version) else f"{registry.name}@{version}")


def _limits(cfg: ServeConfig, req: P._Request) -> int:
    max_tokens = req.requested_max_tokens()
    max_tokens = cfg.default_max_tokens if max_tokens is None else max_tokens
    if max_tokens < 1:
        raise P.APIError(400, f"max_tokens must be at least 1, got {max_tokens}", param="max_tokens")
    if max_tokens > cfg.max_tokens_limit:
        raise P.APIError(400, f"max_tokens {max_tokens} exceeds this server's limit of {cfg.max_tokens_limit}",
                         param="max_tokens")
    if req.n > cfg.max_n:
        raise P.APIError(400, f"n {req.n} exceeds this server's limit of {cfg.max_n}", param="n")
    return max_tokens


def _encode(cfg: ServeConfig, backend, req: P._Request, chat: bool, max_tokens: int) -> list[int]:
    ids = backend.text.chat([m.model_dump() for m in req.messages]) if chat else backend.text.encode(req.prompt)
    if len(ids) > cfg.max_prompt_tokens:
        raise P.APIError(400, f"the prompt is {len(ids)} tokens; this server accepts at most "
                              f"{cfg.max_prompt_tokens}", param="messages" if chat else "prompt",
                         code="prompt_too_long")
    if len(ids) + max_tokens > backend.context:
        raise P.APIError(400, f"prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceeds the model's "
                              f"context of {backend.context}", param="max_tokens", code="context_length_exceeded")
    if req.n > backend.max_batch:
        raise P.APIError(400, f"the {backend.name} backend decodes at most {backend.max_batch} choice(s) per "
                              f"request", param="n")
    return ids


async def _generate(ctx: ServerContext, request: Request, chat: bool):
    t0 = time.perf_counter()
    cfg, route = ctx.cfg, "chat" if chat else "completions"
    doc = await _read_json(request, cfg.max_body_bytes)
    try:
        req = (P.ChatCompletionRequest if chat else P.CompletionRequest).model_validate(doc)
    except ValidationError as e:
        message, param = _validation_message(e)
        raise P.APIError(400, message, param=param) from e
    max_tokens = _limits(cfg, req)
    version = await run_in_threadpool(ctx.registry.route, req.model, req.user)
    try:
        ids = _encode(cfg, version.backend, req, chat, max_tokens)
        channel = Channel()
        params = SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                                seed=req.seed, stop=tuple(req.stops()))
        gen = GenRequest(version, ids, params, emit=channel.put, n=req.n)
        ctx.scheduler.submit(gen)
    except QueueFull as e:
        ctx.registry.release(version)
        raise P.APIError(429, str(e), type_="rate_limit_error", code="queue_full") from e
    except BaseException:
        ctx.registry.release(version)
        raise
    ctx.metrics.inc("leanlm_requests_total", help_="generation requests accepted", route=route)
    ctx.metrics.inc("leanlm_prompt_tokens_total", len(ids) * req.n, help_="prompt tokens")
    rid = P.new_id("chatcmpl" if chat else "cmpl")
    run = _Run(ctx, gen, channel, rid, version.id, chat, t0, route)
    if req.stream:
        include_usage = bool((doc.get("stream_options") or {}).get("include_usage")) if isinstance(doc, dict) else False
        return StreamingResponse(run.sse(include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Leanlm-Version": version.id})
    return await run.collect(request)


@dataclass
class _Run:
    """One accepted request on its way back to the client."""

    ctx: ServerContext
    gen: GenRequest
    channel: Channel
    rid: str
    version_id: str
    chat: bool
    t0: float
    route: str
    first: float | None = None

    def _observe(self, event: tuple) -> None:
        if event[0] == "delta" and self.first is None:
            self.first = time.perf_counter()
            self.ctx.metrics.observe("leanlm_time_to_first_token_seconds", self.first - self.t0,
                                     help_="request received to first text", route=self.route)
        elif event[0] == "done":
            m = self.ctx.metrics
            m.inc("leanlm_completion_tokens_total", event[1]["completion_tokens"], help_="generated tokens")
            m.observe("leanlm_request_seconds", time.perf_counter() - self.t0, help_="request latency",
                      route=self.route)
            m.inc("leanlm_responses_total", help_="requests completed, by version", version=self.version_id)

    def _chunk(self, index: int, text: str | None, reason: str | None, role: bool = False) -> str:
        if self.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            body = P.chat_chunk(self.rid, self.version_id, index, delta, reason)
        else:
            body = P.completion_chunk(self.rid, self.version_id, index, text or "", reason)
        return f"data: {json.dumps(body)}\n\n"

    async def sse(self, include_usage: bool):
        try:
            if self.chat:
                for i in range(self.gen.n):
                    yield self._chunk(i, None, None, role=True)
            while True:
                event = await self.channel.queue.get()
                self._observe(event)
                if event[0] == "delta":
                    yield self._chunk(event[1], event[2], None)
                elif event[0] == "finish":
                    yield self._chunk(event[1], None, event[2])
                elif event[0] == "error":
                    self.ctx.metrics.inc("leanlm_errors_total", help_="requests refused, by status", status="500")
                    yield f"data: {json.dumps(P.APIError(500, event[1], 'server_error').body())}\n\n"
                    break
                elif event[0] == "done":
                    if include_usage:
                        obj = "chat.completion.chunk" if self.chat else "text_completion"
                        yield f"data: {json.dumps(P.usage_chunk(self.rid, self.version_id, obj, P.Usage(**event[1])))}\n\n"
                    yield "data: [DONE]\n\n"
                    break
        finally:                      # normal end, or the client disconnected (the task is cancelled)
            self.gen.cancel()

    async def collect(self, request: Request):
        texts, reasons = [""] * self.gen.n, ["stop"] * self.gen.n
        try:
            while True:
                try:
                    event = await asyncio.wait_for(self.channel.queue.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return JSONResponse({}, status_code=499)
                    continue
                self._observe(event)
                if event[0] == "delta":
                    texts[event[1]] += event[2]
                elif event[0] == "finish":
                    reasons[event[1]] = event[2]
                elif event[0] == "error":
                    raise P.APIError(500, event[1], type_="server_error")
                elif event[0] == "done":
                    usage = P.Usage(**event[1])
                    make = P.chat_response if self.chat else P.completion_response
                    return JSONResponse(make(self.rid, self.version_id, texts, reasons, usage),
                                        headers={"X-Leanlm-Version": self.version_id})
        finally:
            self.gen.cancel()
