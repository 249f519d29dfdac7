"""The wire protocol: OpenAI chat/completions request and response schemas, and its error shape.

Field names and meanings follow the OpenAI API (as vLLM's ``entrypoints/openai/protocol.py`` does);
unknown fields are ignored, as OpenAI's own server does for forward compatibility.
"""
from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class APIError(Exception):
    """An error the client caused (4xx) or the server cannot serve now (5xx), in OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = None
    max_completion_tokens: int | None = None      # the newer name of max_tokens in chat requests
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings")
        return stops

    def stops(self) -> list[str]:
        return list(self.stop or [])

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Request):
    prompt: str = Field(min_length=1)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


# Responses are built as plain dicts by these helpers (one place for each shape).
def chat_response(rid: str, model: str, texts: list[str], reasons: list[str], usage: Usage) -> dict:
    return {"id": rid, "object": "chat.completion", "created": now(), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": r,
                         "logprobs": None} for i, (t, r) in enumerate(zip(texts, reasons))],
            "usage": usage.model_dump()}


def completion_response(rid: str, model: str, texts: list[str], reasons: list[str], usage: Usage) -> dict:
    return {"id": rid, "object": "text_completion", "created": now(), "model": model,
            "choices": [{"index": i, "text": t, "finish_reason": r, "logprobs": None}
                        for i, (t, r) in enumerate(zip(texts, reasons))],
            "usage": usage.model_dump()}


def chat_chunk(rid: str, model: str, index: int, delta: dict, reason: str | None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": now(), "model": model,
            "choices": [{"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}]}


def completion_chunk(rid: str, model: str, index: int, text: str, reason: str | None) -> dict:
    return {"id": rid, "object": "text_completion", "created": now(), "model": model,
            "choices": [{"index": index, "text": text, "finish_reason": reason, "logprobs": None}]}


def usage_chunk(rid: str, model: str, obj: str, usage: Usage) -> dict:
    return {"id": rid, "object": obj, "created": now(), "model": model, "choices": [], "usage": usage.model_dump()}


def model_card(version_id: str, created: int, owner: str = "leanlm", **extra) -> dict:
    return {"id": version_id, "object": "model", "created": created, "owned_by": owner, **extra}
