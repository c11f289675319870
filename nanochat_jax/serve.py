"""Chat web server: nanochat's ``chat_web.py`` for nanochat_jax.

    python -m nanochat_jax.serve                # sft checkpoint, http://127.0.0.1:8000
    python -m nanochat_jax.serve -i rl -n 2     # rl checkpoint, 2 device replicas
    python -m nanochat_jax.serve --demo         # tiny random model, no checkpoint needed

Endpoints (same wire format as nanochat, so its clients keep working):

* ``GET /``                  the single-page chat UI (``static/ui.html``)
* ``POST /chat/completions`` ``{messages: [{role, content}], temperature?,
  max_tokens?, top_k?, seed?}`` -> Server-Sent Events only:
  ``data: {"token": "...", "gpu": <worker id>}`` ... then ``data: {"done": true}``
* ``GET /health``            liveness + readiness + number of workers
* ``GET /stats``             pool occupancy, per-worker counters
* ``GET /config``            default sampling settings, limits and model shape (for the UI)

Design, and why:

* **One replica per local device.** Chat generation is latency-bound batch-1
  decoding, so sharding one model across devices buys little; a full copy per
  device serves N conversations at once (nanochat's ``WorkerPool``). Free
  workers wait in an ``asyncio.Queue``; a request takes one for the whole reply.
* **Generation in a thread.** The Engine is synchronous (jitted steps plus host
  sampling). Running it in an executor keeps the event loop free to accept
  requests, answer ``/health`` and stream other replies; tokens cross back via
  ``loop.call_soon_threadsafe``. A client that disconnects sets a stop flag so
  its worker is released after the next token instead of after ``max_tokens``.
* **Strict, explicit validation.** Every limit (nanochat's abuse limits) fails
  with HTTP 400 and a JSON ``{"detail": "..."}`` naming the problem, including
  malformed JSON (FastAPI's default would be a 422 with a nested structure).
* **Same prompt as training.** Tokens come from ``Tokenizer.render_conversation``
  (``<|bos|>``, user/assistant turns, optional system prompt folded into the
  first user turn) plus a trailing ``<|assistant_start|>``, exactly what SFT saw.
* **Fresh seed per request.** nanochat seeded every request with 42, so
  "regenerate" returned the same reply; here a request may pass ``seed`` for
  reproducibility, otherwise a random one is drawn.
* **Loopback by default, no CORS.** nanochat bound 0.0.0.0 with CORS ``*``;
  that lets any web page the user visits drive the model. Pass ``--host``
  explicitly to expose it.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import functools
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError

logger = logging.getLogger("nanochat_jax.serve")

STATIC_DIR = Path(__file__).with_name("static")

# nanochat's abuse limits (chat_web.py), kept identical.
MAX_MESSAGES = 500
MAX_MESSAGE_CHARS = 8_000
MAX_TOTAL_CHARS = 32_000
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.0, 2.0
MIN_TOP_K, MAX_TOP_K = 1, 200
MIN_MAX_TOKENS, MAX_MAX_TOKENS = 1, 4096
# Bodies are read with a cap so a huge upload cannot exhaust memory before the
# per-message limits get a chance to reject it. 32k chars, JSON-escaped at up
# to 6 bytes each (\uXXXX), plus 500 messages of framing fits well inside 1 MiB.
MAX_BODY_BYTES = 1 << 20

REPLACEMENT_CHAR = "\ufffd"


class BadRequest(Exception):
    """A client error reported as HTTP ``status`` with ``{"detail": message}``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


# --------------------------------------------------------------------------- request model


class ChatMessage(BaseModel):
    """One turn. Strict types: a number where text belongs is a client bug, not something to coerce."""

    model_config = ConfigDict(extra="ignore")
    role: StrictStr
    content: StrictStr


class ChatRequest(BaseModel):
    """nanochat's request body, plus an optional ``seed`` for reproducible sampling.

    ``None`` (or a missing field) means "use the server default" so simple
    clients can send just ``messages``.
    """

    model_config = ConfigDict(extra="ignore")
    messages: list[ChatMessage]
    temperature: StrictFloat | None = None  # strict still takes JSON ints (1 -> 1.0), not "1" or true
    max_tokens: StrictInt | None = None
    top_k: StrictInt | None = None
    seed: StrictInt | None = Field(default=None, ge=0, lt=2**31)  # 31 bits: any JAX PRNG seed, with or without x64


def _format_validation_errors(errors: Sequence[dict]) -> str:
    """pydantic/FastAPI error lists -> one readable line ("messages.0.content: Input should be ...")."""
    parts = []
    for err in errors:
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            parts.append(f"malformed JSON body: {ctx.get('error', err.get('msg', 'invalid JSON'))}")
            continue
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc) if loc else "body"
        parts.append(f"{where}: {err.get('msg', 'invalid value')}")
    return "; ".join(parts) or "invalid request"


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Bytes -> validated ``ChatRequest`` or ``BadRequest`` with a human-readable reason."""
    if not raw.strip():
        raise BadRequest('empty request body: expected JSON like {"messages": [{"role": "user", "content": "hi"}]}')
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"malformed JSON body: {e}") from None
    if not isinstance(obj, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(obj).__name__}")
    try:
        return ChatRequest.model_validate(obj)
    except ValidationError as e:
        raise BadRequest(_format_validation_errors(e.errors())) from None


def validate_chat_request(req: ChatRequest) -> None:
    """nanochat's abuse limits plus the turn structure the model was trained on.

    Roles: an optional leading ``system`` message, then ``user`` /
    ``assistant`` alternating, starting and ending with ``user`` (the server
    writes the next assistant turn; anything else would be a prompt the model
    never saw in SFT).
    """
    msgs = req.messages
    if not msgs:
        raise BadRequest("messages must contain at least one message")
    if len(msgs) > MAX_MESSAGES:
        raise BadRequest(f"too many messages: {len(msgs)} (at most {MAX_MESSAGES})")
    total = 0
    for i, m in enumerate(msgs):
        if not m.content.strip():
            raise BadRequest(f"message {i} ({m.role}) is empty")
        if len(m.content) > MAX_MESSAGE_CHARS:
            raise BadRequest(f"message {i} is too long: {len(m.content)} characters (at most {MAX_MESSAGE_CHARS})")
        total += len(m.content)
    if total > MAX_TOTAL_CHARS:
        raise BadRequest(f"conversation is too long: {total} characters in total (at most {MAX_TOTAL_CHARS})")

    turns = msgs[1:] if msgs[0].role == "system" else msgs
    if not turns:
        raise BadRequest("a system message must be followed by a user message")
    for i, m in enumerate(turns):
        index = i + (len(msgs) - len(turns))
        if m.role not in ("user", "assistant", "system"):
            raise BadRequest(f"message {index} has unknown role {m.role!r}: expected 'user' or 'assistant' (or a leading 'system')")
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            raise BadRequest(
                f"message {index} has role {m.role!r} but {expected!r} was expected: roles must alternate "
                "user/assistant, starting with user (an optional 'system' message may come first)"
            )
    if turns[-1].role != "user":
        raise BadRequest("the last message must be from the user (the server writes the assistant's reply)")

    if req.temperature is not None and not (MIN_TEMPERATURE <= req.temperature <= MAX_TEMPERATURE):
        raise BadRequest(f"temperature must be between {MIN_TEMPERATURE:g} and {MAX_TEMPERATURE:g}, got {req.temperature}")
    if req.top_k is not None and not (MIN_TOP_K <= req.top_k <= MAX_TOP_K):
        raise BadRequest(f"top_k must be between {MIN_TOP_K} and {MAX_TOP_K}, got {req.top_k}")
    if req.max_tokens is not None and not (MIN_MAX_TOKENS <= req.max_tokens <= MAX_MAX_TOKENS):
        raise BadRequest(f"max_tokens must be between {MIN_MAX_TOKENS} and {MAX_MAX_TOKENS}, got {req.max_tokens}")


def render_chat_prompt(tokenizer, messages: Sequence[ChatMessage | dict]) -> list[int]:
    """Prompt tokens for the next assistant turn, exactly as the CLI builds them.

    ``<|bos|>`` + ``<|user_start|>…<|user_end|>`` / ``<|assistant_start|>…<|assistant_end|>``
    per message + ``<|assistant_start|>``. The tokenizer's own renderer is the
    single definition of the chat format, so serving cannot drift from SFT.
    """
    convo = {"messages": [m.model_dump() if isinstance(m, BaseModel) else dict(m) for m in messages]}
    ids, _ = tokenizer.render_conversation(convo, max_tokens=1 << 62)
    ids.append(tokenizer.encode_special("<|assistant_start|>"))
    return ids


def stream_text(
    tokenizer,
    token_ids: Iterable[int],
    stop_ids: Iterable[int],
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[tuple[str, int]]:
    """Turn a token stream into UTF-8-safe text pieces: yields ``(new_text, n_tokens_so_far)``.

    A character may span several byte-level tokens; decoding one token at a
    time would emit U+FFFD halves. Like nanochat, decode the tokens not yet
    shown and hold them back while the text ends in U+FFFD (an incomplete
    character). Unlike nanochat, only the tokens since the last emitted piece
    are re-decoded (once text ends on a whole character, later bytes cannot
    change it), so a long reply costs O(n), not O(n^2). Whatever is still held
    back when generation ends is flushed, so the reply is never silently
    shortened. Stops before a stop token (never emitted) or when ``should_stop()``.
    """
    stop = {int(t) for t in stop_ids}
    pending: list[int] = []
    count = 0
    for tok in token_ids:
        tok = int(tok)
        if tok in stop or should_stop():
            break
        pending.append(tok)
        count += 1
        text = tokenizer.decode(pending)
        if text and not text.endswith(REPLACEMENT_CHAR):
            yield text, count
            pending = []
    if pending:
        yield tokenizer.decode(pending), count


# --------------------------------------------------------------------------- workers


@dataclasses.dataclass
class Worker:
    """One model replica on one device, with its own Engine and counters."""

    id: int
    device: Any  # jax.Device, or None for "wherever the engine's arrays live"
    engine: Any
    model_config: Any = None
    busy: bool = False
    requests_served: int = 0
    tokens_generated: int = 0
    busy_seconds: float = 0.0

    def info(self) -> dict:
        return {
            "id": self.id,
            "device": str(self.device) if self.device is not None else None,
            "busy": self.busy,
            "requests_served": self.requests_served,
            "tokens_generated": self.tokens_generated,
            "busy_seconds": round(self.busy_seconds, 3),
        }


def replicate_model(model, device):
    """A copy of an NNX model whose every array is committed to ``device``.

    Jitted calls run where their committed inputs live, so a replica per
    device is all it takes for N workers to decode in parallel.
    """
    import jax
    from flax import nnx

    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.device_put(state, device))


# Decode steps per compiled Engine chunk when serving. The Engine hands tokens to
# the host once per chunk, so this is the streaming granularity: its default
# (32, tuned for batch throughput) would hold back the first words of every
# reply for 32 steps; 8 streams smoothly at a small per-chunk host cost.
SERVE_CHUNK_SIZE = 8


def default_engine_factory(chunk_size: int = SERVE_CHUNK_SIZE) -> Callable:
    """``(model, tokenizer) -> Engine`` with a streaming-friendly chunk size."""
    from nanochat_jax.engine import Engine

    return functools.partial(Engine, chunk_size=chunk_size)


def build_workers(model, tokenizer, devices: Sequence | None = None, engine_factory: Callable | None = None) -> list[Worker]:
    """One ``Worker`` (replica + Engine) per device; defaults to the first local device."""
    import jax

    if engine_factory is None:
        engine_factory = default_engine_factory()
    devices = list(devices) if devices is not None else jax.local_devices()[:1]
    if not devices:
        raise ValueError("no devices to place workers on")
    workers = []
    for i, dev in enumerate(devices):
        replica = replicate_model(model, dev)
        workers.append(Worker(id=i, device=dev, engine=engine_factory(replica, tokenizer), model_config=getattr(model, "config", None)))
    return workers


class WorkerPool:
    """Free workers in an ``asyncio.Queue``: ``acquire`` waits for one, ``release`` returns it.

    The queue is created on first use so it binds to the server's running
    event loop (apps may be built before any loop exists, e.g. in tests).
    """

    def __init__(self, workers: Sequence[Worker]):
        if not workers:
            raise ValueError("a worker pool needs at least one worker")
        self.workers = list(workers)
        self._queue: asyncio.Queue | None = None

    def _q(self) -> asyncio.Queue:
        if self._queue is None:
            self.reset()
        return self._queue

    def reset(self) -> None:
        """All workers free, in a new queue (an asyncio.Queue binds to the first loop that waits on it)."""
        self._queue = asyncio.Queue()
        for w in self.workers:
            w.busy = False
            self._queue.put_nowait(w)

    async def acquire(self) -> Worker:
        worker = await self._q().get()
        worker.busy = True
        return worker

    def release(self, worker: Worker) -> None:
        worker.busy = False
        self._q().put_nowait(worker)

    @property
    def available(self) -> int:
        return sum(not w.busy for w in self.workers)


# --------------------------------------------------------------------------- app


def _sse(payload: dict) -> str:
    # ensure_ascii=False: send characters, not \u escapes (what nanochat's UI expects and smaller).
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _context_len(model_config) -> int | None:
    return getattr(model_config, "sequence_len", None)


def create_app(
    workers_or_model,
    tokenizer,
    *,
    temperature: float = 0.8,
    top_k: int = 50,
    max_tokens: int = 512,
    context_len: int | None = None,
    devices: Sequence | None = None,
    engine_factory: Callable | None = None,
    model_info: dict | None = None,
) -> FastAPI:
    """Build the FastAPI app around ready workers or a bare model.

    ``workers_or_model``: a list of ``Worker`` (from ``build_workers``) or a
    model, which is then replicated onto ``devices`` (default: first local
    device). ``temperature``/``top_k``/``max_tokens`` are the defaults used
    when a request omits them. ``context_len`` caps prompt + reply tokens
    (default: the model's ``sequence_len``, the longest context it trained
    on); longer conversations get a 400 asking the user to start over, and
    ``max_tokens`` is clipped to what fits.
    """
    if not (MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        raise ValueError(f"default temperature {temperature} outside [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]")
    if not (MIN_TOP_K <= top_k <= MAX_TOP_K):
        raise ValueError(f"default top_k {top_k} outside [{MIN_TOP_K}, {MAX_TOP_K}]")
    if not (MIN_MAX_TOKENS <= max_tokens <= MAX_MAX_TOKENS):
        raise ValueError(f"default max_tokens {max_tokens} outside [{MIN_MAX_TOKENS}, {MAX_MAX_TOKENS}]")
    if isinstance(workers_or_model, (list, tuple)) and workers_or_model and all(isinstance(w, Worker) for w in workers_or_model):
        workers = list(workers_or_model)
    else:
        workers = build_workers(workers_or_model, tokenizer, devices, engine_factory)
    model_config = workers[0].model_config
    if context_len is None:
        context_len = _context_len(model_config)

    pool = WorkerPool(workers)
    # One thread per worker: a worker runs one generation at a time, so more threads could never be busy.
    # Created per serving session (lifespan), so the same app can be served, stopped and served again.
    executors: list[concurrent.futures.ThreadPoolExecutor] = []

    def executor() -> concurrent.futures.ThreadPoolExecutor:
        if not executors:
            executors.append(concurrent.futures.ThreadPoolExecutor(max_workers=len(workers), thread_name_prefix="nanochat-gen"))
        return executors[0]

    stop_ids = [tokenizer.encode_special("<|assistant_end|>"), tokenizer.get_bos_token_id()]
    stats = {"requests_served": 0, "requests_rejected": 0, "started": time.time()}
    ui_html = (STATIC_DIR / "ui.html").read_text(encoding="utf-8")
    logo_svg = (STATIC_DIR / "logo.svg").read_text(encoding="utf-8")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pool.reset()  # a fresh queue bound to this serving loop (the app may be served more than once)
        yield
        if executors:
            executors.pop().shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="nanochat_jax", summary="Chat with a nanochat_jax model", lifespan=lifespan)
    app.state.pool = pool
    app.state.stats = stats

    @app.exception_handler(BadRequest)
    async def _bad_request(request: Request, exc: BadRequest):
        stats["requests_rejected"] += 1
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        # FastAPI answers 422 with a nested list; clients here get nanochat's 400 and one readable line.
        stats["requests_rejected"] += 1
        return JSONResponse({"detail": _format_validation_errors(exc.errors())}, status_code=400)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(ui_html, headers={"Cache-Control": "no-cache"})

    @app.get("/logo.svg", include_in_schema=False)
    @app.get("/favicon.svg", include_in_schema=False)
    async def logo() -> Response:
        return Response(logo_svg, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "ready": len(pool.workers) > 0, "num_workers": len(pool.workers), "available_workers": pool.available}

    @app.get("/stats")
    async def get_stats() -> dict:
        return {
            "total_workers": len(pool.workers),
            "available_workers": pool.available,
            "busy_workers": len(pool.workers) - pool.available,
            "requests_served": stats["requests_served"],
            "requests_rejected": stats["requests_rejected"],
            "uptime_seconds": round(time.time() - stats["started"], 1),
            "workers": [w.info() for w in pool.workers],
        }

    @app.get("/config")
    async def get_config() -> dict:
        model = None
        if model_config is not None:
            model = {
                k: getattr(model_config, k)
                for k in ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")
                if hasattr(model_config, k)
            }
        return {
            "defaults": {"temperature": temperature, "top_k": top_k, "max_tokens": max_tokens},
            "limits": {
                "max_messages": MAX_MESSAGES,
                "max_message_chars": MAX_MESSAGE_CHARS,
                "max_total_chars": MAX_TOTAL_CHARS,
                "temperature": [MIN_TEMPERATURE, MAX_TEMPERATURE],
                "top_k": [MIN_TOP_K, MAX_TOP_K],
                "max_tokens": [MIN_MAX_TOKENS, MAX_MAX_TOKENS],
                "context_len": context_len,
            },
            "model": model,
            "info": model_info or {},
        }

    async def _read_body(request: Request) -> bytes:
        """The body, refusing (413) to buffer more than MAX_BODY_BYTES whatever Content-Length claims."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise BadRequest(f"request body too large: {declared} bytes (at most {MAX_BODY_BYTES})", status=413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise BadRequest(f"request body too large (at most {MAX_BODY_BYTES} bytes)", status=413)
            chunks.append(chunk)
        return b"".join(chunks)

    @app.post(
        "/chat/completions",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "SSE: token events, then done"},
            400: {"description": "invalid request"},
        },
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["messages"]}}}}
        },
    )
    async def chat_completions(request: Request) -> StreamingResponse:
        req = parse_chat_request(await _read_body(request))
        validate_chat_request(req)
        try:
            prompt = render_chat_prompt(tokenizer, req.messages)
        except ValueError as e:  # the renderer's own structural checks, should validation ever miss one
            raise BadRequest(str(e)) from None
        want = req.max_tokens if req.max_tokens is not None else max_tokens
        if context_len is not None:
            room = context_len - len(prompt)
            if room < 1:
                raise BadRequest(
                    f"conversation is {len(prompt)} tokens, which fills the model's {context_len}-token context: "
                    "start a new chat (or shorten earlier messages)"
                )
            want = min(want, room)
        params = {
            "max_tokens": want,
            "temperature": float(req.temperature if req.temperature is not None else temperature),
            "top_k": int(req.top_k if req.top_k is not None else top_k),
            "seed": req.seed if req.seed is not None else secrets.randbits(31),
        }
        return StreamingResponse(
            _generate_events(prompt, params),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _generate_events(prompt: list[int], params: dict):
        """SSE body: runs the Engine on a pooled worker in a thread, relaying its text pieces."""
        worker = await pool.acquire()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        t0 = time.perf_counter()
        n_tokens = 0

        def emit(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # loop already closed (server shutting down)
                pass

        def work() -> None:
            gen = None
            try:
                import jax

                # Place anything the Engine creates without an explicit device next to this replica.
                ctx = jax.default_device(worker.device) if worker.device is not None else _nullcontext()
                with ctx:
                    gen = worker.engine.generate(prompt, num_samples=1, **params)
                    tokens = (column[0] for column, _mask in gen)
                    for piece, count in stream_text(tokenizer, tokens, stop_ids, cancelled.is_set):
                        emit(("token", piece, count))
            except Exception as e:  # reported to the client; the worker stays usable
                logger.exception("generation failed on worker %d", worker.id)
                emit(("error", f"generation failed: {type(e).__name__}: {e}", 0))
            finally:
                if gen is not None and hasattr(gen, "close"):
                    gen.close()
                emit(("end", None, 0))

        def finished(_fut) -> None:
            worker.busy_seconds += time.perf_counter() - t0
            pool.release(worker)

        future = loop.run_in_executor(executor(), work)
        future.add_done_callback(finished)  # release only when the thread is really done with the replica
        try:
            while True:
                kind, value, count = await queue.get()
                if kind == "token":
                    n_tokens = count
                    yield _sse({"token": value, "gpu": worker.id})
                elif kind == "error":
                    yield _sse({"error": value, "gpu": worker.id})
                else:
                    break
            yield _sse({"done": True})
        finally:
            cancelled.set()  # client gone or reply done: let the thread stop at the next token
            worker.requests_served += 1
            worker.tokens_generated += n_tokens
            stats["requests_served"] += 1
            logger.info(
                "worker %d: %d prompt tokens -> %d tokens in %.2fs (T=%.2f, top_k=%d)",
                worker.id,
                len(prompt),
                n_tokens,
                time.perf_counter() - t0,
                params["temperature"],
                params["top_k"],
            )

    return app


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------- background server


class BackgroundServer:
    """Run an app with uvicorn in a daemon thread on a loopback socket bound up front.

    For tests and notebooks: binding the socket here (port 0 = any free port)
    and handing it to uvicorn means the address is known before the server
    starts and no other process can grab it in between.

        with BackgroundServer(app) as url:
            httpx.get(url + "/health")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import socket

        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True, name="nanochat-serve")

    def start(self, timeout: float = 30.0) -> str:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.02)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------- demo model


def demo_model_and_tokenizer(vocab_size: int = 300, sequence_len: int = 128, seed: int = 0):
    """A tiny random-weight GPT and a BPE tokenizer trained on this package's own source.

    For trying the UI, and for tests, without any checkpoint or data download:
    the text is always on disk, training takes well under a second. The model
    babbles: ``lm_head`` (zero-initialised in nanochat, which would make every
    token equally likely) gets random weights so outputs vary; see below for
    the columns kept at zero so replies are readable junk that usually runs
    to ``max_tokens``.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from nanochat_jax.gpt import GPT, GPTConfig
    from nanochat_jax.tokenizer import Tokenizer

    pkg = Path(__file__).parent
    docs = [p.read_text(encoding="utf-8") for p in sorted(pkg.glob("*.py"))]
    tokenizer = Tokenizer.train_from_iterator(docs, vocab_size=vocab_size)
    config = GPTConfig(sequence_len=sequence_len, vocab_size=tokenizer.get_vocab_size(), n_layer=2, n_head=2, n_kv_head=2, n_embd=64)
    model = GPT(config, rngs=nnx.Rngs(seed))
    C, Vp = model.lm_head[...].shape
    # Unit-RMS hidden states times N(0, 0.375^2) weights: logits with std ~3, peaked but varied.
    # Columns left at zero (logit 0) are ~100x less likely than a typical column: the special
    # tokens (stop tokens included, so replies run long), and tokens that are not whole UTF-8 text on their own (lone bytes >= 0x80), which
    # would otherwise fill the demo's replies with U+FFFD.
    keep = np.zeros(Vp, dtype=bool)
    for i in range(tokenizer.get_vocab_size()):
        try:
            text = tokenizer.enc.decode_single_token_bytes(i).decode("utf-8")
            keep[i] = all(c.isprintable() or c in "\n\t" for c in text)
        except (KeyError, UnicodeDecodeError):
            pass
    keep[[tokenizer.encode_special(name) for name in tokenizer.get_special_tokens()]] = False
    head = 0.375 * jax.random.normal(jax.random.key(seed + 1), (C, Vp), jnp.float32)
    model.lm_head[...] = head * jnp.asarray(keep, jnp.float32)[None, :]
    return model, tokenizer


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nanochat_jax.serve", description="Chat web UI and SSE API for a nanochat_jax model")
    p.add_argument("-i", "--source", default="sft", help="checkpoint stage to load: base|mid|sft|rl (default: sft)")
    p.add_argument("-g", "--model-tag", default=None, help="model tag (default: the stage's largest model)")
    p.add_argument("-s", "--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("-t", "--temperature", type=float, default=0.8, help="default sampling temperature (default: 0.8)")
    p.add_argument("-k", "--top-k", type=int, default=50, help="default top-k (default: 50)")
    p.add_argument("-m", "--max-tokens", type=int, default=512, help="default max tokens per reply (default: 512)")
    p.add_argument("-p", "--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1; use 0.0.0.0 only on a trusted network)")
    p.add_argument("-n", "--num-devices", type=int, default=None, help="replicas, one per local device (default: all local devices)")
    p.add_argument(
        "-d", "--dtype", default=None, choices=["float32", "bfloat16"], help="compute dtype (default: bfloat16 on GPU/TPU, float32 on CPU)"
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=SERVE_CHUNK_SIZE,
        help=f"decode steps per compiled chunk = streaming granularity (default: {SERVE_CHUNK_SIZE})",
    )
    p.add_argument("--no-warmup", action="store_true", help="skip compiling each replica before serving (first request is then slow)")
    p.add_argument("--demo", action="store_true", help="serve a tiny random-weight model (no checkpoint needed; output is gibberish)")
    p.add_argument("--log-level", default="info", help="logging level (default: info)")
    return p.parse_args(argv)


def warmup(workers: Sequence[Worker], tokenizer, *, max_tokens: int, top_k: int, context_len: int | None) -> None:
    """Compile each worker's programs before the first user waits for them.

    The Engine compiles per (prompt bucket, cache bucket, top_k), so warm up
    with the server's default ``max_tokens`` and ``top_k`` on a short prompt:
    the shape most first messages will hit. One decode chunk is enough; the
    generator is closed after its first token.
    """
    import jax

    prompt = render_chat_prompt(tokenizer, [{"role": "user", "content": "Hello"}])
    if context_len is not None:
        max_tokens = max(1, min(max_tokens, context_len - len(prompt)))
    for w in workers:
        t0 = time.perf_counter()
        with jax.default_device(w.device):
            gen = w.engine.generate(prompt, num_samples=1, max_tokens=max_tokens, temperature=1.0, top_k=top_k, seed=0)
            next(gen, None)
            gen.close()
        logger.info("worker %d (%s) warmed up in %.1fs", w.id, w.device, time.perf_counter() - t0)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.chunk_size < 1:
        raise SystemExit("--chunk-size must be >= 1")
    for flag, value, (lo, hi) in (
        ("-t/--temperature", args.temperature, (MIN_TEMPERATURE, MAX_TEMPERATURE)),
        ("-k/--top-k", args.top_k, (MIN_TOP_K, MAX_TOP_K)),
        ("-m/--max-tokens", args.max_tokens, (MIN_MAX_TOKENS, MAX_MAX_TOKENS)),
    ):
        if not lo <= value <= hi:
            raise SystemExit(f"{flag} must be between {lo:g} and {hi:g}, got {value:g}")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import jax
    import uvicorn

    devices = jax.local_devices()
    if args.num_devices is not None:
        if not 1 <= args.num_devices <= len(devices):
            raise SystemExit(f"--num-devices must be between 1 and {len(devices)} (local devices: {devices})")
        devices = devices[: args.num_devices]
    dtype = args.dtype or ("float32" if devices[0].platform == "cpu" else "bfloat16")

    if args.demo:
        model, tokenizer = demo_model_and_tokenizer()
        info = {"source": "demo (random weights)"}
    else:
        from nanochat_jax.checkpoint import CheckpointNotFoundError, load_model

        try:
            model, tokenizer, meta = load_model(args.source, model_tag=args.model_tag, step=args.step, compute_dtype=dtype)
        except CheckpointNotFoundError as e:
            raise SystemExit(f"{e}\n(or try the UI without a checkpoint: python -m nanochat_jax.serve --demo)") from None
        info = {"source": args.source, "model_tag": args.model_tag, "step": meta.get("step", args.step)}
    info["dtype"] = str(model.config.compute_dtype)

    workers = build_workers(model, tokenizer, devices, default_engine_factory(args.chunk_size))
    logger.info("%d worker(s) on %s", len(workers), ", ".join(str(w.device) for w in workers))
    if not args.no_warmup:
        warmup(workers, tokenizer, max_tokens=args.max_tokens, top_k=args.top_k, context_len=model.config.sequence_len)
    app = create_app(workers, tokenizer, temperature=args.temperature, top_k=args.top_k, max_tokens=args.max_tokens, model_info=info)
    print(f"nanochat_jax chat UI: http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())


if __name__ == "__main__":
    main()
