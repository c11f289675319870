"""End-to-end: the chat page in headless Chromium against the real server and Engine.

The API tests prove the wire format; this proves a person can actually chat:
the page loads with no network access beyond the server, a typed message is
sent, the reply streams into an assistant bubble and equals exactly the text
the server streamed over SSE, and editing, regenerating, slash commands and a
rejected request all behave. The model is a tiny random-weight GPT, so the
reply is gibberish; what is checked is the plumbing.

Needs Debian's ``chromium`` (``apt-get install chromium``) and the Python
``playwright`` package (driving that system browser via ``executable_path``;
``playwright install`` is not needed and does not work offline). Skipped with
the reason when either is missing. A screenshot is written to
``$NANOCHAT_UI_SCREENSHOT`` (default ``/tmp/nanochat_ui.png``) for a human look.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from nanochat_jax.demo import demo_model_and_tokenizer
from nanochat_jax.serve_app import create_app
from nanochat_jax.serve_workers import build_workers
from serve_helpers import BackgroundServer

CHROMIUM = os.environ.get("NANOCHAT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = os.environ.get("NANOCHAT_UI_SCREENSHOT", "/tmp/nanochat_ui.png")
# Headless on a closed network: without the background-networking flags Chromium keeps
# trying to reach Google services; --no-sandbox because CI runs as root.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 120_000  # first reply includes JIT compilation on a shared CPU

sync_api = pytest.importorskip("playwright.sync_api", reason="Python package 'playwright' is not installed (pip install playwright)")
if CHROMIUM is None:
    pytest.skip("no Chromium binary (apt-get install chromium, or set NANOCHAT_CHROMIUM)", allow_module_level=True)


def sse_tokens(body: str) -> tuple[list[str], bool]:
    tokens, done = [], False
    for block in body.split("\n\n"):
        if block.startswith("data: "):
            ev = json.loads(block[6:])
            if "token" in ev:
                tokens.append(ev["token"])
            done = done or ev.get("done") is True
    return tokens, done


@pytest.fixture(scope="module")
def server_url():
    model, tokenizer = demo_model_and_tokenizer(vocab_size=300, sequence_len=128, seed=0)
    app = create_app(build_workers(model, tokenizer), tokenizer, max_tokens=24, model_info={"source": "test (random weights)"})
    with BackgroundServer(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        # A Chromium that is installed but will not start is a failure, not a skip.
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server_url):
    context = browser.new_context(viewport={"width": 1100, "height": 780})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    pg.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    outside: list[str] = []
    pg.on("request", lambda r: outside.append(r.url) if not r.url.startswith(server_url) and not r.url.startswith("data:") else None)
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(server_url + "/")
    yield pg
    context.close()
    assert not outside, f"page requested resources outside the server: {outside}"
    # A rejected request logs a console error for the 400 on purpose; anything else is a bug.
    unexpected = [e for e in errors if "status of 400" not in e]
    assert not unexpected, unexpected


def send_and_capture(page, action) -> tuple[list[str], bool]:
    """Run ``action`` (which triggers a chat request) and return the SSE tokens the browser received."""
    with page.expect_response(lambda r: r.url.endswith("/chat/completions")) as info:
        action()
    resp = info.value
    assert resp.status == 200, resp.text()
    assert resp.headers["content-type"].startswith("text/event-stream")
    return sse_tokens(resp.text())


def wait_idle(page) -> None:
    page.wait_for_function("!document.body.classList.contains('busy')")


def assistant_texts(page) -> list[str]:
    return page.locator(".msg.assistant .bubble").all_text_contents()


def test_chat_streams_reply_into_page(page):
    # The page picked up the server's defaults and model description from /config.
    page.wait_for_function("document.getElementById('model-info').textContent.includes('2 layers')")
    assert page.input_value("#max-tokens") == "24"

    page.fill("#input", "Hello! Tell me a story about a robot.")
    tokens, done = send_and_capture(page, lambda: page.click("#send"))
    assert done and tokens, "the network saw no SSE tokens"
    wait_idle(page)

    assert page.locator(".msg.user .bubble").all_text_contents() == ["Hello! Tell me a story about a robot."]
    (reply,) = assistant_texts(page)
    assert reply.strip(), "assistant bubble is empty"
    assert reply == "".join(tokens), "the bubble must show exactly the streamed text"
    assert page.input_value("#input") == ""
    page.screenshot(path=SCREENSHOT)


def test_edit_regenerate_commands_and_errors(page):
    page.fill("#input", "First question")
    send_and_capture(page, lambda: page.press("#input", "Enter"))
    wait_idle(page)
    assert len(assistant_texts(page)) == 1

    # Regenerate: same user turn, a new reply replaces the old one.
    page.locator(".msg.assistant").first.hover()
    tokens, done = send_and_capture(page, lambda: page.click(".msg.assistant .actions button:has-text('Regenerate')"))
    wait_idle(page)
    assert done and assistant_texts(page) == ["".join(tokens)]
    assert page.locator(".msg.user").count() == 1

    # Edit the user message: the conversation is truncated after it and answered again.
    page.click(".msg.user .bubble")
    page.fill(".editor textarea", "Edited question")
    tokens, done = send_and_capture(page, lambda: page.click(".editor button:has-text('Save')"))
    wait_idle(page)
    assert page.locator(".msg.user .bubble").all_text_contents() == ["Edited question"]
    assert assistant_texts(page) == ["".join(tokens)]

    # Slash commands change the sampling settings the next request will carry.
    page.fill("#input", "/temperature 0.3")
    page.press("#input", "Enter")
    assert page.input_value("#temperature") == "0.3"
    page.fill("#input", "/topk 999")
    page.press("#input", "Enter")
    page.wait_for_selector(".notice.error:has-text('top_k must be')")
    page.fill("#input", "/help")
    page.press("#input", "Enter")
    page.wait_for_selector(".notice:has-text('/clear')")

    # A request the server rejects: the reason is shown and the text goes back to the composer.
    too_long = "a" * 8_001
    page.fill("#input", too_long)
    with page.expect_response(lambda r: r.url.endswith("/chat/completions")) as info:
        page.press("#input", "Enter")
    assert info.value.status == 400
    body = json.loads(info.value.request.post_data)
    assert body["temperature"] == 0.3 and body["top_k"] == 50
    page.wait_for_selector(".notice.error:has-text('too long')")
    wait_idle(page)
    assert page.input_value("#input") == too_long
    assert page.locator(".msg.user").count() == 1 and len(assistant_texts(page)) == 1

    # /clear starts over.
    page.fill("#input", "/clear")
    page.press("#input", "Enter")
    page.wait_for_selector(".welcome")
    assert page.locator(".msg").count() == 0
