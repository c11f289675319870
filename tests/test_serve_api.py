"""HTTP API of the chat server (nanochat_jax.serve_app), on a real Engine and a tiny random model.

What matters for a public-facing endpoint: every malformed or abusive request
is refused with a 400 and a readable reason, none of them takes the server
down or leaks a worker, and a good request afterwards still streams
Server-Sent Events in nanochat's wire format (``data: {"token", "gpu"}`` ...
``data: {"done": true}``).

The model is nanochat's GPT at toy size with random weights (see
``nanochat_jax.demo``) so the test needs no checkpoint; prompts
stay short and ``max_tokens`` small so every request reuses one compiled
prefill/decode bucket and the module runs in seconds after the first compile.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import jax
import pytest
from fastapi.testclient import TestClient

from nanochat_jax.demo import demo_model_and_tokenizer
from nanochat_jax.serve_app import create_app
from nanochat_jax.serve_request import MAX_BODY_BYTES
from nanochat_jax.serve_workers import build_workers
from model_helpers import greedy_decode
from serve_helpers import BackgroundServer

MAX_TOKENS = 12  # server default in these tests: prompt + reply fit the smallest cache bucket


def sse_events(body: str) -> list[dict]:
    """Parse an SSE body into its JSON payloads, checking the framing on the way."""
    events = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), f"not an SSE data line: {block!r}"
        events.append(json.loads(block[len("data: ") :]))
    return events


def hi(**extra) -> dict:
    return {"messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.fixture(scope="module")
def demo():
    return demo_model_and_tokenizer(vocab_size=300, sequence_len=128, seed=0)


@pytest.fixture(scope="module")
def client(demo):
    model, tokenizer = demo
    app = create_app(build_workers(model, tokenizer), tokenizer, temperature=0.8, top_k=50, max_tokens=MAX_TOKENS)
    with TestClient(app) as c:
        yield c


def post_chat(client, payload=None, *, content: bytes | str | None = None):
    if content is None:
        return client.post("/chat/completions", json=payload)
    return client.post("/chat/completions", content=content, headers={"Content-Type": "application/json"})


def assert_streams(client, payload=None) -> tuple[list[dict], str]:
    r = post_chat(client, payload or hi())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == {"done": True}
    tokens = events[:-1]
    assert tokens, "no token events before done"
    for ev in tokens:
        assert set(ev) == {"token", "gpu"}, ev
        assert isinstance(ev["token"], str) and ev["token"]
        assert ev["gpu"] == 0
    return tokens, "".join(ev["token"] for ev in tokens)


# --------------------------------------------------------------------------- validation

LONG = "x" * 7_000
BAD_REQUESTS = {
    "oversized message": (hi(messages=[{"role": "user", "content": "a" * 8_001}]), "too long"),
    "too many messages": (
        {"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": "ok"} for i in range(501)]},
        "too many messages",
    ),
    "total too long": (
        {"messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": LONG} for i in range(5)]},
        "in total",
    ),
    "temperature too high": (hi(temperature=2.5), "temperature"),
    "temperature negative": (hi(temperature=-0.1), "temperature"),
    "temperature not a number": (hi(temperature="hot"), "temperature"),
    "top_k zero": (hi(top_k=0), "top_k"),
    "top_k too big": (hi(top_k=201), "top_k"),
    "top_k fractional": (hi(top_k=2.5), "top_k"),
    "max_tokens zero": (hi(max_tokens=0), "max_tokens"),
    "max_tokens too big": (hi(max_tokens=4097), "max_tokens"),
    "max_tokens boolean": (hi(max_tokens=True), "max_tokens"),
    "starts with assistant": ({"messages": [{"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}]}, "alternate"),
    "two user turns": ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "alternate"),
    "ends with assistant": ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "last message"),
    "unknown role": ({"messages": [{"role": "robot", "content": "beep"}]}, "role"),
    "system only": ({"messages": [{"role": "system", "content": "be nice"}]}, "system"),
    "empty content": ({"messages": [{"role": "user", "content": "   "}]}, "empty"),
    "content not text": ({"messages": [{"role": "user", "content": 42}]}, "content"),
    "no messages": ({"messages": []}, "at least one"),
    "messages missing": ({"temperature": 0.5}, "messages"),
    "body is a list": ([{"role": "user", "content": "hi"}], "JSON object"),
}


@pytest.mark.parametrize("payload,needle", list(BAD_REQUESTS.values()), ids=list(BAD_REQUESTS))
def test_bad_request_is_400_with_reason(client, payload, needle):
    r = post_chat(client, payload)
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and needle.lower() in detail.lower(), detail


@pytest.mark.parametrize(
    "raw",
    [b'{"messages": [{"role": "user", "content": "hi"}', b"not json at all", b"", b"\xff\xfe{}"],
    ids=["truncated", "text", "empty", "bad-utf8"],
)
def test_malformed_json_is_400(client, raw):
    r = post_chat(client, content=raw)
    assert r.status_code == 400, r.text
    assert "json" in r.json()["detail"].lower()


def test_oversized_body_is_refused_before_parsing(client):
    r = post_chat(client, content=b'{"messages": "' + b"a" * (MAX_BODY_BYTES + 10) + b'"}')
    assert r.status_code == 413
    assert "too large" in r.json()["detail"]


def test_conversation_longer_than_context_is_400(client):
    # 128-token context; ~3 chars per token at this vocabulary size, so 2,000 chars overflow it.
    r = post_chat(client, hi(messages=[{"role": "user", "content": "the quick brown fox " * 100}]))
    assert r.status_code == 400
    assert "context" in r.json()["detail"]


def test_server_still_streams_after_bad_requests(client):
    for payload, _ in BAD_REQUESTS.values():
        assert post_chat(client, payload).status_code == 400
    assert post_chat(client, content=b"{oops").status_code == 400
    tokens, text = assert_streams(client)
    assert len(tokens) <= MAX_TOKENS
    assert text.strip()


# --------------------------------------------------------------------------- streaming


def test_stream_respects_max_tokens_and_sampling_fields(client):
    tokens, _ = assert_streams(client, hi(max_tokens=3, temperature=0.0, top_k=1))
    assert 1 <= len(tokens) <= 3


def test_system_prompt_and_multi_turn_are_accepted(client):
    convo = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and?"},
    ]
    assert_streams(client, {"messages": convo, "max_tokens": 4})


@pytest.fixture(scope="module")
def context_demo():
    """The demo model with random output projections: its logits depend on the whole context, not the last token only."""
    model, tokenizer = demo_model_and_tokenizer(vocab_size=300, sequence_len=128, seed=1)
    for i, name in enumerate(("attn_c_proj", "mlp_c_proj")):
        p = getattr(model.h, name)
        p[...] = 0.5 * jax.random.normal(jax.random.key(10 + i), p.shape) / p.shape[1] ** 0.5
    return model, tokenizer


def test_greedy_reply_is_the_whole_conversations_greedy_decode(context_demo):
    """At temperature 0 the stream equals a naive full-forward greedy decode of the rendered conversation.

    The model's logits depend on the whole context, so a server that dropped
    any part of the conversation would answer differently.
    """
    model, tokenizer = context_demo
    convo = [{"role": "user", "content": "def f(x):"}, {"role": "assistant", "content": "return x"},
             {"role": "user", "content": "import jax"}]
    stop = (tokenizer.encode_special("<|assistant_end|>"), tokenizer.get_bos_token_id())
    want = greedy_decode(model, tokenizer.render_for_completion({"messages": convo}), 10, stop)
    other = greedy_decode(model, tokenizer.render_for_completion({"messages": convo[:1]}), 10, stop)
    assert want != other  # the test model's reply does depend on the earlier turns
    app = create_app(build_workers(model, tokenizer), tokenizer, temperature=0.8, top_k=50, max_tokens=MAX_TOKENS)
    with TestClient(app) as c:
        _, text = assert_streams(c, {"messages": convo, "temperature": 0.0, "max_tokens": 10})
    assert text == tokenizer.decode(want)


def test_concurrent_requests_are_decoded_together_each_as_alone(context_demo):
    """Concurrent chats through the real app share one batch, and each reply is what that request gets alone.

    Five greedy requests (different prompts, lengths and max_tokens) must
    stream the naive full-forward greedy decode of their own conversation; a
    sampled request (temperature 1, top_k 7, a seed) must stream what it
    streams when sent alone. ``/health`` must show the six in one batch.
    """
    model, tokenizer = context_demo
    stop = (tokenizer.encode_special("<|assistant_end|>"), tokenizer.get_bos_token_id())
    texts = ["def f(x):", "import jax", "return the sum of x and y", "hello", "class Batcher"]
    greedy = [{"messages": [{"role": "user", "content": t}], "temperature": 0.0, "max_tokens": 6 + 2 * i} for i, t in enumerate(texts)]
    sampled = {"messages": [{"role": "user", "content": "print(x)"}], "temperature": 1.0, "top_k": 7, "max_tokens": 9, "seed": 5}
    want = [tokenizer.decode(greedy_decode(model, tokenizer.render_for_completion(g), g["max_tokens"], stop)) for g in greedy]
    app = create_app(build_workers(model, tokenizer), tokenizer, max_tokens=MAX_TOKENS, max_batch=16, batch_window_s=1.0)
    with BackgroundServer(app) as url:

        async def together():
            async with httpx.AsyncClient(base_url=url, timeout=120) as ac:
                return await asyncio.gather(*(ac.post("/chat/completions", json=body) for body in [*greedy, sampled]))

        replies = [text_of(r) for r in asyncio.run(together())]
        health = httpx.get(url + "/health").json()
        alone = text_of(httpx.post(url + "/chat/completions", json=sampled, timeout=120))
    assert replies[:-1] == want
    assert replies[-1] == alone and alone
    assert health["largest_batch"] == 6 and health["batches"] == 1, health


def text_of(response) -> str:
    assert response.status_code == 200, response.text
    events = sse_events(response.text)
    assert events[-1] == {"done": True}
    return "".join(e["token"] for e in events[:-1])


def test_seed_makes_replies_reproducible(client):
    _, a = assert_streams(client, hi(seed=1234, temperature=1.0))
    _, b = assert_streams(client, hi(seed=1234, temperature=1.0))
    assert a == b
    texts = {assert_streams(client, hi(seed=s, temperature=1.0))[1] for s in range(4)}
    assert len(texts) > 1, "different seeds should give different replies on a random model"


# --------------------------------------------------------------------------- health, stats, pages


def test_health_and_stats(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["ready"] is True and h["num_workers"] == 1 and h["largest_batch"] == 1
    before = client.get("/stats").json()["requests_served"]
    assert_streams(client)
    st = client.get("/stats").json()
    assert st["total_workers"] == 1 and st["available_workers"] == 1 and st["busy_workers"] == 0
    assert st["requests_served"] == before + 1
    assert st["requests_rejected"] > 0  # the bad requests above were counted, not served
    (w,) = st["workers"]
    assert w["id"] == 0 and w["busy"] is False and w["requests_served"] >= 1 and w["tokens_generated"] >= 1
    assert w["batch_sizes"] == {"1": w["batches"]} and w["batches"] >= w["requests_served"]  # one at a time: never batched
    assert w["device"].lower().startswith("cpu")


def test_config_page_and_logo(client):
    cfg = client.get("/config").json()
    assert cfg["defaults"] == {"temperature": 0.8, "top_k": 50, "max_tokens": MAX_TOKENS}
    assert cfg["limits"]["context_len"] == 128
    assert cfg["model"]["n_layer"] == 2
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "chat/completions" in page.text
    assert "http://" not in page.text and "https://" not in page.text, "the UI must not load anything from the internet"
    assert client.get("/logo.svg").headers["content-type"].startswith("image/svg+xml")


def test_unknown_route_and_wrong_method(client):
    assert client.get("/nope").status_code == 404
    assert client.get("/chat/completions").status_code == 405


# --------------------------------------------------------------------------- several workers


def test_two_workers_and_client_disconnect(demo):
    """Two replicas behind a real uvicorn: concurrent replies both finish, a
    client that hangs up mid-stream does not leak its worker, and the app
    survives a stop and restart."""
    import jax

    model, tokenizer = demo
    dev = jax.local_devices()[0]
    # Both replicas on one device share compiled programs, keeping the test fast; the pool logic is the same.
    workers = build_workers(model, tokenizer, [dev, dev])
    app = create_app(workers, tokenizer, max_tokens=MAX_TOKENS)
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=120) as http:
        assert http.get("/health").json()["num_workers"] == 2

        async def both():
            async with httpx.AsyncClient(base_url=url, timeout=120) as ac:
                return await asyncio.gather(*(ac.post("/chat/completions", json=hi(seed=s)) for s in range(2)))

        for r in asyncio.run(both()):
            assert r.status_code == 200
            assert sse_events(r.text)[-1] == {"done": True}

        with http.stream("POST", "/chat/completions", json=hi(max_tokens=50)) as r:  # same cache bucket as the rest: no recompile
            assert r.status_code == 200
            next(r.iter_lines())  # first event arrived; now hang up

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            st = http.get("/stats").json()
            if st["available_workers"] == 2 and st["requests_served"] == 3:
                break
            time.sleep(0.05)
        assert st["available_workers"] == 2 and st["requests_served"] == 3, st
        assert {w["id"] for w in st["workers"]} == {0, 1}
        _, text = assert_streams_http(http)
        assert text

    # The same app can be stopped and served again (fresh worker queue and thread pool).
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=120) as http:
        _, text = assert_streams_http(http)
        assert text and http.get("/stats").json()["available_workers"] == 2


def assert_streams_http(http: httpx.Client) -> tuple[list[dict], str]:
    r = http.post("/chat/completions", json=hi())
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[-1] == {"done": True}
    return events[:-1], "".join(e["token"] for e in events[:-1])
