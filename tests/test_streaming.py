"""The UTF-8-safe token streamer shared by the chat CLI and the web server."""

from __future__ import annotations

import random

import pytest

from nanochat_jax.streaming import REPLACEMENT_CHAR, stream_text
from nanochat_jax.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok():
    text = ["The quick brown fox jumps over the lazy dog. Hello world! 2 + 3 = 5. " * 4, "naïve café, ünïcödé 😀 " * 3]
    return Tokenizer.train_from_iterator(iter(text), vocab_size=320)


def byte_ids(tok, text: str) -> list[int]:
    """One token per byte, so multi-byte characters span 2-4 tokens."""
    return [tok.enc.encode_single_token(bytes([b])) for b in text.encode("utf-8")]


@pytest.mark.parametrize("text", ["naïve € 😀 ok", "héllo 🙂 wörld"])
def test_characters_are_never_split(tok, text):
    pieces = [p for p, _ in stream_text(tok, byte_ids(tok, text), stop_ids=[])]
    assert "".join(pieces) == text
    assert all(REPLACEMENT_CHAR not in p for p in pieces)
    emoji = next(c for c in text if len(c.encode()) == 4)
    assert emoji in pieces  # the 4-byte character came out whole, in one piece


def test_stops_before_stop_tokens_and_flushes_a_cut_character(tok):
    ids = byte_ids(tok, "héllo 🙂 wörld")
    end = tok.encode_special("<|assistant_end|>")
    assert "".join(p for p, _ in stream_text(tok, ids[:3] + [end] + ids[3:], stop_ids=[end])) == "hé"
    assert list(stream_text(tok, ids, stop_ids=[], should_stop=lambda: True)) == []
    # A truncated character at the very end is flushed (as U+FFFD) rather than silently dropped.
    assert "".join(p for p, _ in stream_text(tok, ids[:2], stop_ids=[])) == "h" + REPLACEMENT_CHAR


def test_pieces_always_add_up_to_the_full_decode(tok):
    """Incremental decoding must never change the text: random byte soup included."""
    rng = random.Random(0)
    specials = {tok.encode_special(s) for s in tok.get_special_tokens()}
    ordinary = [i for i in range(tok.get_vocab_size()) if i not in specials]
    for _ in range(200):
        ids = [rng.choice(ordinary) for _ in range(rng.randint(1, 40))]
        pieces = list(stream_text(tok, ids, stop_ids=specials))
        assert "".join(p for p, _ in pieces) == tok.decode(ids)
        assert pieces[-1][1] == len(ids)
        assert all(p and not p.endswith(REPLACEMENT_CHAR) for p, _ in pieces[:-1])
