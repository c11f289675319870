"""Tests for nanochat_jax.tokenizer (train.tokenizer: tests/test_train_tokenizer.py).

Expected values come from independent sources: rustbpe trained directly,
tiktoken Encodings built by hand, byte lengths computed from rustbpe's own
ranks, and chat renderings assembled in the test from a rule table.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import rustbpe
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from nanochat_jax import tokenizer as tokmod
from nanochat_jax.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer, TokenizerFormatError
from text_helpers import make_docs

VOCAB = 512

# The pattern as printed in nanochat's source / the reference (§4); kept as a
# literal here so a typo in the module is caught.
REFERENCE_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
REFERENCE_SPECIALS = [
    "<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
    "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>",
]  # fmt: skip

@functools.lru_cache(maxsize=None)
def corpus() -> tuple[str, ...]:
    return tuple(make_docs(600, seed=0))  # ~330 KB


@functools.lru_cache(maxsize=None)
def trained() -> Tokenizer:
    return Tokenizer.train_from_iterator(iter(corpus()), VOCAB)


@functools.lru_cache(maxsize=None)
def direct_rustbpe() -> rustbpe.Tokenizer:
    rb = rustbpe.Tokenizer()
    rb.train_from_iterator(iter(corpus()), VOCAB - 9, pattern=REFERENCE_PATTERN)
    return rb


SAMPLES = [
    "",
    "Hello, world! It's 2024 and we're testing 1234567 tokens.",
    "naïve café 你好世界 🎉🚀 👍🏽 \n\n\tdef f(x):\n    return x**2\n",
    "   leading and trailing spaces   ",
    "<|bos|> is just text here",
    make_docs(1, seed=99)[0],
]


def ranks_of(tok: Tokenizer) -> dict[bytes, int]:
    """Mergeable ranks recovered through tiktoken's public API only."""
    specials = {tok.enc.encode_single_token(s) for s in tok.enc.special_tokens_set}
    return {tok.enc.decode_single_token_bytes(i): i for i in range(tok.get_vocab_size()) if i not in specials}


# ------------------------------------------------------------------ constants
def test_constants_match_reference():
    assert SPLIT_PATTERN == REFERENCE_PATTERN
    assert SPECIAL_TOKENS == REFERENCE_SPECIALS


def test_numbers_split_into_groups_of_at_most_two_digits():
    tok = trained()
    for text in ["1234567", "x 98765 y", "3.14159"]:
        pieces = [tok.id_to_token(i) for i in tok.encode(text)]
        assert "".join(pieces) == text
        assert all(sum(ch.isdigit() for ch in p) <= 2 for p in pieces), pieces


# ------------------------------------------------------------------- training
def test_training_matches_rustbpe_directly():
    tok, rb = trained(), direct_rustbpe()
    expected = {bytes(k): v for k, v in rb.get_mergeable_ranks()}
    assert len(expected) == VOCAB - 9
    assert ranks_of(tok) == expected
    for text in SAMPLES + list(corpus()[:20]):
        assert tok.encode(text) == rb.encode(text)
    assert tok.encode(SAMPLES) == rb.batch_encode(SAMPLES)


def test_training_twice_is_deterministic():
    again = Tokenizer.train_from_iterator(list(corpus()), VOCAB)
    assert ranks_of(again) == ranks_of(trained())


@pytest.mark.parametrize("bad", [0, 100, 264])
def test_vocab_size_too_small_is_rejected(bad):
    with pytest.raises(ValueError, match="vocab_size must be >= 265"):
        Tokenizer.train_from_iterator(["hello"], bad)


def test_vocab_size_wrong_type_and_str_iterator():
    with pytest.raises(TypeError):
        Tokenizer.train_from_iterator(["hello"], 300.5)
    with pytest.raises(TypeError, match="single str"):
        Tokenizer.train_from_iterator("hello world", 300)


def test_too_little_text_warns_and_keeps_specials_contiguous():
    with pytest.warns(UserWarning, match="not the requested"):
        tok = Tokenizer.train_from_iterator(["ab ab ab"], 400)
    v = tok.get_vocab_size()
    assert v < 400
    assert [tok.encode_special(s) for s in SPECIAL_TOKENS] == list(range(v - 9, v))


# ------------------------------------------------------------ specials, bytes
def test_special_token_ids_and_encode_special():
    tok = trained()
    assert tok.get_vocab_size() == VOCAB
    for k, name in enumerate(REFERENCE_SPECIALS):
        assert tok.encode_special(name) == VOCAB - 9 + k
        assert tok.encode_special(name) == VOCAB - 9 + k  # cached path
        assert tok.decode([VOCAB - 9 + k]) == name
    assert tok.get_bos_token_id() == VOCAB - 9
    assert tok.get_special_tokens() == set(REFERENCE_SPECIALS)
    with pytest.raises(ValueError, match="not a special token"):
        tok.encode_special("<|nope|>")


def test_special_strings_in_text_are_not_special():
    tok = trained()
    ids = tok.encode("<|bos|><|assistant_end|>")
    assert all(i < VOCAB - 9 for i in ids)
    assert tok.decode(ids) == "<|bos|><|assistant_end|>"


def test_token_bytes_uses_raw_bytes():
    tok = trained()
    tb = tok.token_bytes()
    assert tb.dtype == np.int32 and tb.shape == (VOCAB,)
    inverse = {v: bytes(k) for k, v in direct_rustbpe().get_mergeable_ranks()}
    expected = np.array([len(inverse[i]) for i in range(VOCAB - 9)] + [0] * 9)
    np.testing.assert_array_equal(tb, expected)
    # single bytes >= 0x80 are not UTF-8 on their own; nanochat classic counted them as 3
    assert (tb[0x80:0x100] == 1).all()
    partial = [i for i in range(256, VOCAB - 9) if not _valid_utf8(inverse[i])]
    assert partial, "corpus should produce merged tokens that split a multi-byte character"
    assert all(tb[i] == len(inverse[i]) for i in partial)
    # decode-then-re-encode (the classic computation) would get some of them wrong
    assert any(tb[i] != len(tok.id_to_token(i).encode("utf-8")) for i in partial)
    tb[0] = 99  # returned array is a copy
    assert tok.token_bytes()[0] == 1


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# ------------------------------------------------------------- encode/decode
@settings(max_examples=100, deadline=None)
@given(st.text())
def test_roundtrip_arbitrary_unicode(text):
    tok = trained()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    with_specials = tok.encode(text, prepend="<|bos|>", append=VOCAB - 1)
    assert with_specials == [VOCAB - 9] + ids + [VOCAB - 1]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(list("ab 1é你🎉\n")) | st.characters(), max_size=40), max_size=8))
def test_batch_encode_equals_single(texts):
    tok = trained()
    assert tok.encode(texts, prepend="<|bos|>", num_threads=2) == [tok.encode(t, prepend="<|bos|>") for t in texts]


def test_encode_argument_errors_and_array_decode():
    tok = trained()
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.encode("x", prepend=VOCAB)
    with pytest.raises(ValueError, match="not a special token"):
        tok.encode("x", append="<|eos|>")
    with pytest.raises(TypeError):
        tok.encode("x", prepend=1.5)
    with pytest.raises(TypeError, match="element 1"):
        tok.encode(["a", 3])
    with pytest.raises(TypeError):
        tok.encode(b"bytes")
    ids = tok.encode(SAMPLES[2], prepend=np.int64(VOCAB - 9))
    assert tok.decode(np.array(ids)) == "<|bos|>" + SAMPLES[2]


# --------------------------------------------------------------------- chat
# rule table: segment kind -> (opening special, closing special, mask)
RULES = {
    "user": ("<|user_start|>", "<|user_end|>", 0),
    "text": (None, None, 1),
    "python": ("<|python_start|>", "<|python_end|>", 1),
    "python_output": ("<|output_start|>", "<|output_end|>", 0),
}


def expected_render(segments, max_tokens=2048):
    """Build (ids, mask) from [(kind, text)] with hard-coded special ids."""
    sid = {name: VOCAB - 9 + k for k, name in enumerate(REFERENCE_SPECIALS)}
    ids, mask = [sid["<|bos|>"]], [0]
    for kind, text in segments:
        if kind == "assistant_start":
            ids.append(sid["<|assistant_start|>"]); mask.append(0)  # noqa: E702
        elif kind == "assistant_end":
            ids.append(sid["<|assistant_end|>"]); mask.append(1)  # noqa: E702
        else:
            open_, close, m = RULES[kind]
            seg = ([sid[open_]] if open_ else []) + plain(text) + ([sid[close]] if close else [])
            ids += seg
            mask += [m] * len(seg)
    return ids[:max_tokens], mask[:max_tokens]


def plain(text):
    return direct_rustbpe().encode(text)  # independent of Tokenizer.encode


CONVERSATION = {
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 12*34?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me compute. "},
                {"type": "python", "text": "12*34"},
                {"type": "python_output", "text": "408"},
                {"type": "text", "text": "It is 408."},
            ],
        },
        {"role": "user", "content": "thanks 🎉"},
        {"role": "assistant", "content": "You're welcome."},
    ]
}
CONVERSATION_SEGMENTS = [
    ("user", "You are terse.\n\nWhat is 12*34?"),
    ("assistant_start", None),
    ("text", "Let me compute. "),
    ("python", "12*34"),
    ("python_output", "408"),
    ("text", "It is 408."),
    ("assistant_end", None),
    ("user", "thanks 🎉"),
    ("assistant_start", None),
    ("text", "You're welcome."),
    ("assistant_end", None),
]


def test_render_conversation_rules():
    ids, mask = trained().render_conversation(CONVERSATION)
    exp_ids, exp_mask = expected_render(CONVERSATION_SEGMENTS)
    assert ids == exp_ids
    assert mask == exp_mask
    assert len(ids) == len(mask)
    # the caller's conversation is not modified by the system-message merge
    assert CONVERSATION["messages"][1]["content"] == "What is 12*34?"


def test_render_without_system_and_ending_on_user():
    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "ok"}]}
    ids, mask = trained().render_conversation(conv)
    assert (ids, mask) == expected_render(
        [("user", "hi"), ("assistant_start", None), ("text", "yo"), ("assistant_end", None), ("user", "ok")]
    )


@pytest.mark.parametrize("max_tokens", [1, 7, 20])
def test_render_truncation(max_tokens):
    ids, mask = trained().render_conversation(CONVERSATION, max_tokens=max_tokens)
    full_ids, full_mask = expected_render(CONVERSATION_SEGMENTS)
    assert len(ids) == len(mask) == max_tokens
    assert (ids, mask) == (full_ids[:max_tokens], full_mask[:max_tokens])


@pytest.mark.parametrize(
    "messages, match",
    [
        ([{"role": "assistant", "content": "x"}], "expected 'user'"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "expected 'assistant'"),
        ([{"role": "system", "content": "s"}], "followed by a user"),
        ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}], "followed by a user"),
        ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}], "expected 'assistant'"),
        ([], "no messages"),
        ([{"role": "user", "content": ["x"]}], "must be a str"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "image", "text": "x"}]}], "unknown type"),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": 5}], "str or a list"),
        ([{"role": "user"}], "'role' and 'content'"),
    ],
)
def test_render_errors(messages, match):
    with pytest.raises(ValueError, match=match):
        trained().render_conversation({"messages": messages})


def test_render_for_completion():
    tok = trained()
    ids = tok.render_for_completion(CONVERSATION)
    prompt_ids, _ = expected_render(CONVERSATION_SEGMENTS[:-3])  # everything before the last assistant turn
    assert ids == prompt_ids + [VOCAB - 9 + REFERENCE_SPECIALS.index("<|assistant_start|>")]
    assert len(CONVERSATION["messages"]) == 5  # input untouched
    # A live chat ends with the user's turn: the same prompt, with nothing dropped.
    assert tok.render_for_completion({"messages": CONVERSATION["messages"][:-1]}) == ids
    with pytest.raises(ValueError, match="expected 'user'"):
        tok.render_for_completion({"messages": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]})


# ------------------------------------------------------------------ storage
def nanochat_style_encoding() -> tiktoken.Encoding:
    """Built the way nanochat's RustBPETokenizer.train_from_iterator does."""
    ranks = {bytes(k): v for k, v in direct_rustbpe().get_mergeable_ranks()}
    specials = {name: len(ranks) + i for i, name in enumerate(REFERENCE_SPECIALS)}
    return tiktoken.Encoding(name="rustbpe", pat_str=REFERENCE_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def test_loads_nanochat_pickle(tmp_path):
    enc = nanochat_style_encoding()
    with open(tmp_path / "tokenizer.pkl", "wb") as f:
        pickle.dump(enc, f)
    tok = Tokenizer.from_directory(tmp_path)
    for text in SAMPLES:
        assert tok.encode(text) == enc.encode_ordinary(text)
    assert tok.get_bos_token_id() == enc.encode_single_token("<|bos|>")
    assert tok.get_vocab_size() == enc.n_vocab
    # and it can be re-saved in the project's format
    tok.save(tmp_path / "converted")
    again = Tokenizer.from_directory(tmp_path / "converted")
    assert [again.encode(t) for t in SAMPLES] == [enc.encode_ordinary(t) for t in SAMPLES]


def test_save_load_roundtrip(tmp_path):
    tok = trained()
    out = tok.save(tmp_path / "tok")
    assert sorted(p.name for p in out.iterdir()) == ["token_bytes.npy", "tokenizer.json", "tokenizer.tiktoken"]
    loaded = Tokenizer.from_directory(out)
    assert ranks_of(loaded) == ranks_of(tok)
    assert [loaded.encode(t) for t in SAMPLES] == [tok.encode(t) for t in SAMPLES]
    assert loaded.get_special_tokens() == tok.get_special_tokens()
    np.testing.assert_array_equal(np.load(out / "token_bytes.npy"), tok.token_bytes())
    # the ranks file is tiktoken's own text format: tiktoken's loader reads it
    from tiktoken.load import load_tiktoken_bpe

    assert load_tiktoken_bpe(str(out / "tokenizer.tiktoken")) == ranks_of(tok)
    meta = json.loads((out / "tokenizer.json").read_text())
    assert meta["vocab_size"] == VOCAB and meta["special_tokens"]["<|bos|>"] == VOCAB - 9
    assert not list(out.glob(".*.tmp"))  # no leftovers from atomic writes


def test_project_format_preferred_over_pickle(tmp_path):
    trained().save(tmp_path)
    (tmp_path / "tokenizer.pkl").write_bytes(b"this would fail to unpickle")
    assert Tokenizer.from_directory(tmp_path).get_vocab_size() == VOCAB


def test_missing_directory_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m train.tokenizer"):
        Tokenizer.from_directory(tmp_path / "does_not_exist")
    with pytest.raises(FileNotFoundError, match=str(tmp_path).replace("\\", "\\\\")):
        Tokenizer.from_directory(tmp_path)  # exists but empty


def test_get_tokenizer_uses_base_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_JAX_BASE_DIR", str(tmp_path))
    assert tokmod.tokenizer_dir() == tmp_path / "tokenizer"
    with pytest.raises(FileNotFoundError, match="train.tokenizer"):
        tokmod.get_tokenizer()
    trained().save(tmp_path / "tokenizer")
    assert tokmod.get_tokenizer().encode(SAMPLES[1]) == trained().encode(SAMPLES[1])


def _corrupt_ranks_line(d: Path):
    p = d / "tokenizer.tiktoken"
    lines = p.read_bytes().splitlines()
    lines[300] = b"!!notbase64 300"
    p.write_bytes(b"\n".join(lines) + b"\n")


def _swap_ranks_keep_checksum(d: Path):
    """Valid base64, checksum updated, but a duplicated rank: must still be rejected."""
    p = d / "tokenizer.tiktoken"
    lines = p.read_bytes().splitlines()
    lines[300] = base64.b64encode(b"zzzz-unique") + b" 299"
    data = b"\n".join(lines) + b"\n"
    p.write_bytes(data)
    meta = json.loads((d / "tokenizer.json").read_text())
    meta["ranks_sha256"] = hashlib.sha256(data).hexdigest()
    (d / "tokenizer.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda d: (d / "tokenizer.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "tokenizer.json").write_text('{"format": "other"}'), "not a nanochat_jax-tokenizer"),
        (lambda d: (d / "tokenizer.tiktoken").write_bytes(b"truncated"), "checksum"),
        (lambda d: (d / "tokenizer.tiktoken").unlink(), "missing"),
        (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer.json"),
        (_swap_ranks_keep_checksum, "duplicates or gaps"),
    ],
)
def test_corrupt_project_files(tmp_path, corrupt, match):
    trained().save(tmp_path)
    corrupt(tmp_path)
    with pytest.raises(TokenizerFormatError, match=match):
        Tokenizer.from_directory(tmp_path)


def test_corrupt_ranks_line_with_matching_checksum(tmp_path):
    trained().save(tmp_path)
    _corrupt_ranks_line(tmp_path)
    meta = json.loads((tmp_path / "tokenizer.json").read_text())
    meta["ranks_sha256"] = hashlib.sha256((tmp_path / "tokenizer.tiktoken").read_bytes()).hexdigest()
    (tmp_path / "tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(TokenizerFormatError, match="line 301"):
        Tokenizer.from_directory(tmp_path)


@pytest.mark.parametrize("payload", [b"garbage, not a pickle", None, pickle.dumps({"not": "an encoding"})])
def test_corrupt_pickle(tmp_path, payload):
    if payload is None:  # truncated real pickle
        payload = pickle.dumps(nanochat_style_encoding())[:1000]
    (tmp_path / "tokenizer.pkl").write_bytes(payload)
    with pytest.raises(TokenizerFormatError, match="tokenizer.pkl"):
        Tokenizer.from_directory(tmp_path)
