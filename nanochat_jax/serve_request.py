"""The chat request body. Its fields carry nanochat's abuse limits; a bad body becomes one readable line."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError, model_validator
from starlette.requests import Request

# nanochat's abuse limits (chat_web.py), kept identical.
MAX_MESSAGES = 500
MAX_MESSAGE_CHARS = 8_000
MAX_TOTAL_CHARS = 32_000
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.0, 2.0
MIN_TOP_K, MAX_TOP_K = 1, 200
MIN_MAX_TOKENS, MAX_MAX_TOKENS = 1, 4096
# Read at most this much before parsing: 32k chars JSON-escaped at up to 6 bytes each, plus framing, fit.
MAX_BODY_BYTES = 1 << 20


class BadRequest(Exception):
    """A client error reported as HTTP ``status`` with ``{"detail": message}``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


class Sampling(BaseModel):
    """Sampling settings; ``None`` = the server's default. Strict: ``"1"`` or ``true`` is a client bug, not a number."""

    model_config = ConfigDict(extra="ignore")
    temperature: StrictFloat | None = Field(None, ge=MIN_TEMPERATURE, le=MAX_TEMPERATURE)  # JSON ints still count (1 -> 1.0)
    top_k: StrictInt | None = Field(None, ge=MIN_TOP_K, le=MAX_TOP_K)
    max_tokens: StrictInt | None = Field(None, ge=MIN_MAX_TOKENS, le=MAX_MAX_TOKENS)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: StrictStr
    content: StrictStr = Field(max_length=MAX_MESSAGE_CHARS)


class ChatRequest(Sampling):
    """nanochat's body plus an optional ``seed`` (nanochat used 42 always, so "regenerate" repeated itself)."""

    messages: list[ChatMessage] = Field(max_length=MAX_MESSAGES)
    seed: StrictInt | None = Field(None, ge=0, lt=2**31)  # 31 bits: any JAX PRNG seed, with or without x64

    @model_validator(mode="after")
    def _turns_as_in_sft(self) -> ChatRequest:
        """An optional leading system message, then user/assistant alternating, ending with user (SFT's shape)."""
        msgs = self.messages
        if not msgs:
            raise ValueError("messages must contain at least one message")
        total = sum(len(m.content) for m in msgs)
        if total > MAX_TOTAL_CHARS:
            raise ValueError(f"conversation is too long: {total} characters in total (at most {MAX_TOTAL_CHARS})")
        for i, m in enumerate(msgs):
            if not m.content.strip():
                raise ValueError(f"message {i} ({m.role}) is empty")
        first = 1 if msgs[0].role == "system" else 0
        if first == len(msgs):
            raise ValueError("a system message must be followed by a user message")
        for i, m in enumerate(msgs[first:], first):
            if m.role not in ("user", "assistant", "system"):
                raise ValueError(f"message {i} has unknown role {m.role!r}: expected 'user' or 'assistant' (or a leading 'system')")
            expected = "assistant" if (i - first) % 2 else "user"
            if m.role != expected:
                raise ValueError(
                    f"message {i} has role {m.role!r} but {expected!r} was expected: roles must alternate "
                    "user/assistant, starting with user (an optional 'system' message may come first)"
                )
        if msgs[-1].role != "user":
            raise ValueError("the last message must be from the user (the server writes the assistant's reply)")
        return self


def describe_errors(errors: Sequence[dict]) -> str:
    """pydantic's error list as one readable line, e.g. "messages.0.content is too long: 8001 characters (at most 8000)"."""
    parts = []
    for err in errors:
        kind, ctx = err["type"], err.get("ctx") or {}
        where = ".".join(str(p) for p in err["loc"])
        if kind == "json_invalid":
            parts.append(f"malformed JSON body: {ctx.get('error', err['msg'])}")
        elif kind == "model_type" and not where:
            parts.append(f"request body must be a JSON object, got {type(err['input']).__name__}")
        elif kind == "value_error":  # one of the checks above: its own words
            parts.append(str(ctx["error"]))
        elif kind == "too_long":
            parts.append(f"too many {where}: {ctx['actual_length']} (at most {ctx['max_length']})")
        elif kind == "string_too_long":
            parts.append(f"{where} is too long: {len(err['input'])} characters (at most {ctx['max_length']})")
        else:
            parts.append(f"{where or 'body'}: {err['msg']}")
    return "; ".join(parts) or "invalid request"


async def read_chat_request(request: Request) -> ChatRequest:
    """The validated body, or ``BadRequest``: 413 past MAX_BODY_BYTES (whatever Content-Length claims), else 400."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadRequest(f"request body too large: {declared} bytes (at most {MAX_BODY_BYTES})", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest(f"request body too large (at most {MAX_BODY_BYTES} bytes)", status=413)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise BadRequest('empty request body: expected JSON like {"messages": [{"role": "user", "content": "hi"}]}')
    try:
        return ChatRequest.model_validate_json(raw)
    except ValidationError as e:
        raise BadRequest(describe_errors(e.errors())) from None
