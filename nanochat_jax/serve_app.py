"""The chat server's FastAPI app, in nanochat's wire format so its clients keep working.

    GET  /                  the chat UI (static/ui.html)
    POST /chat/completions  a ChatRequest -> SSE ``data: {"token": ..., "gpu": <worker>}`` ... ``data: {"done": true}``
    GET  /health, /stats    readiness; pool occupancy and per-worker counters
    GET  /config            default sampling settings, limits and model shape (for the UI)

Requests go to the least-loaded worker's batcher (``serve_batcher``): requests
that arrive together are decoded together in one Engine call, in the worker's
thread, and each row's text crosses back to the event loop, which stays free
for other requests. A client that hangs up sets a stop flag, so its row leaves
the batch at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from nanochat_jax import serve_request as limits
from nanochat_jax.serve_batcher import DEFAULT_MAX_BATCH, DEFAULT_WINDOW_S, Batcher, Job, pick
from nanochat_jax.serve_request import BadRequest, ChatRequest, Sampling, read_chat_request
from nanochat_jax.serve_workers import Worker

logger = logging.getLogger("nanochat_jax.serve")
STATIC_DIR = Path(__file__).with_name("static")
router = APIRouter()


@dataclasses.dataclass
class ChatService:
    """What the routes share, as ``app.state.chat``: the batchers (one per worker), the tokenizer, the defaults, the counters."""

    batchers: list[Batcher]
    tokenizer: Any
    defaults: Sampling
    context_len: int | None
    model_info: dict
    requests_served: int = 0
    requests_rejected: int = 0
    started: float = dataclasses.field(default_factory=time.time)

    def generate_args(self, req: ChatRequest, prompt_len: int) -> dict:
        """``Engine.generate`` settings: the request's, else the defaults; max_tokens clipped to the context."""
        args = self.defaults.model_dump() | req.model_dump(include=set(Sampling.model_fields), exclude_none=True)
        if self.context_len is not None:
            room = self.context_len - prompt_len
            if room < 1:
                raise BadRequest(
                    f"conversation is {prompt_len} tokens, which fills the model's {self.context_len}-token context: "
                    "start a new chat (or shorten earlier messages)"
                )
            args["max_tokens"] = min(args["max_tokens"], room)
        # A fresh seed unless asked for one: nanochat's fixed 42 made "regenerate" repeat itself.
        return args | {"seed": req.seed if req.seed is not None else secrets.randbits(31)}


def create_app(
    workers: Sequence[Worker],
    tokenizer,
    *,
    temperature: float = 0.8,
    top_k: int = 50,
    max_tokens: int = 512,
    context_len: int | None = None,
    model_info: dict | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    batch_window_s: float = DEFAULT_WINDOW_S,
) -> FastAPI:
    """The app around ready workers (``serve_workers.build_workers``).

    The sampling arguments are the defaults a request may omit (out of range:
    ``ValueError``). ``context_len`` caps prompt + reply (default: the model's
    ``sequence_len``): a longer conversation gets a 400 asking to start over.
    A worker decodes up to ``max_batch`` requests together, those that arrive
    within ``batch_window_s`` of the first (``max_batch=1``: one at a time).
    """
    if not workers:
        raise ValueError("the server needs at least one worker")
    batchers = [Batcher(w, tokenizer, max_batch=max_batch, window_s=batch_window_s) for w in workers]
    if context_len is None:
        context_len = getattr(workers[0].model_config, "sequence_len", None)
    defaults = Sampling(temperature=temperature, top_k=top_k, max_tokens=max_tokens)
    chat = ChatService(batchers, tokenizer, defaults, context_len, model_info or {})

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # Per serving session, so one app can be served, stopped and served again.
        for b in batchers:
            b.start()
        yield
        for b in batchers:
            b.stop()

    app = FastAPI(title="nanochat_jax", summary="Chat with a nanochat_jax model", lifespan=lifespan)
    app.state.chat = chat
    app.add_exception_handler(BadRequest, _bad_request)
    app.include_router(router)
    return app


async def _bad_request(request: Request, exc: BadRequest) -> JSONResponse:
    request.app.state.chat.requests_rejected += 1
    return JSONResponse({"detail": exc.message}, status_code=exc.status)


@functools.cache
def _static(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    return HTMLResponse(_static("ui.html"), headers={"Cache-Control": "no-cache"})


@router.get("/logo.svg", include_in_schema=False)
@router.get("/favicon.svg", include_in_schema=False)
async def logo() -> Response:
    return Response(_static("logo.svg"), media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


@router.get("/health")
async def health(request: Request) -> dict:
    workers = [b.worker for b in request.app.state.chat.batchers]
    return {
        "status": "ok",
        "ready": True,
        "num_workers": len(workers),
        "available_workers": sum(not w.busy for w in workers),
        "batches": sum(sum(w.batch_sizes.values()) for w in workers),
        "largest_batch": max((max(w.batch_sizes, default=0) for w in workers), default=0),
    }


@router.get("/stats")
async def stats(request: Request) -> dict:
    chat = request.app.state.chat
    workers = [b.worker for b in chat.batchers]
    busy = sum(w.busy for w in workers)
    return {
        "total_workers": len(workers),
        "available_workers": len(workers) - busy,
        "busy_workers": busy,
        "waiting_requests": sum(b.waiting for b in chat.batchers),
        "requests_served": chat.requests_served,
        "requests_rejected": chat.requests_rejected,
        "uptime_seconds": round(time.time() - chat.started, 1),
        "workers": [w.info() for w in workers],
    }


@router.get("/config")
async def config(request: Request) -> dict:
    chat = request.app.state.chat
    cfg = chat.batchers[0].worker.model_config
    fields = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")
    return {
        "defaults": chat.defaults.model_dump(),
        "limits": {
            "max_messages": limits.MAX_MESSAGES,
            "max_message_chars": limits.MAX_MESSAGE_CHARS,
            "max_total_chars": limits.MAX_TOTAL_CHARS,
            "temperature": [limits.MIN_TEMPERATURE, limits.MAX_TEMPERATURE],
            "top_k": [limits.MIN_TOP_K, limits.MAX_TOP_K],
            "max_tokens": [limits.MIN_MAX_TOKENS, limits.MAX_MAX_TOKENS],
            "context_len": chat.context_len,
        },
        "model": None if cfg is None else {k: getattr(cfg, k) for k in fields if hasattr(cfg, k)},
        "info": chat.model_info,
    }


@router.post(
    "/chat/completions",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "SSE: token events, then done"}, 400: {"description": "invalid"}},
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["messages"]}}}}
    },
)
async def chat_completions(request: Request) -> StreamingResponse:
    chat = request.app.state.chat
    req = await read_chat_request(request)
    prompt = chat.tokenizer.render_for_completion(req.model_dump(include={"messages"}))
    events = _events(chat, prompt, chat.generate_args(req, len(prompt)))
    return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse(payload: dict) -> str:
    # ensure_ascii=False: characters, not \u escapes (what nanochat's UI expects, and smaller).
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _events(chat: ChatService, prompt: list[int], args: dict):
    """The SSE body: the request joins a worker's next batch; its text pieces are relayed as they come."""
    batcher = pick(chat.batchers)
    worker: Worker = batcher.worker
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    t0 = time.perf_counter()
    n_tokens = 0

    def emit(item) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed (server shutting down)
            loop.call_soon_threadsafe(queue.put_nowait, item)

    job = Job(prompt, args, emit)
    batcher.submit(job)
    try:
        while (item := await queue.get())[0] != "end":
            kind, text, count = item
            if kind == "token":
                n_tokens = count
            yield _sse({kind: text, "gpu": worker.id})
        yield _sse({"done": True})
    finally:
        job.cancelled.set()  # client gone or reply done: the row leaves its batch at the next token
        worker.requests_served += 1
        worker.tokens_generated += n_tokens
        chat.requests_served += 1
        logger.info(
            "worker %d: %d prompt tokens -> %d tokens in %.2fs (T=%.2f, top_k=%d)",
            worker.id,
            len(prompt),
            n_tokens,
            time.perf_counter() - t0,
            args["temperature"],
            args["top_k"],
        )
