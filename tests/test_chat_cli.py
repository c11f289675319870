"""Chat CLI: scripted sessions against an independent greedy reference, a one-shot prompt from a
real checkpoint, and the error when no checkpoint exists (streaming itself: test_streaming.py)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from model_helpers import greedy_decode
from nanochat_jax import chat
from nanochat_jax.checkpoint import CheckpointNotFoundError
from nanochat_jax.gpt import GPT, GPTConfig
from nanochat_jax.tokenizer import SPECIAL_TOKENS, Tokenizer

REF_T = 128
MAX_TOKENS = 10


@pytest.fixture(scope="module")
def tok():
    text = ["The quick brown fox jumps over the lazy dog. Hello world! 2 + 3 = 5. " * 4, "naïve café, ünïcödé 😀 " * 3]
    return Tokenizer.train_from_iterator(iter(text), vocab_size=320)


@pytest.fixture(scope="module")
def model(tok):
    """Random tiny model; special-token logits are exactly 0 so greedy replies never stop early."""
    m = GPT(GPTConfig(sequence_len=REF_T, vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_kv_head=2, n_embd=64), rngs=nnx.Rngs(3))
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(7), 3)
    specials = jnp.asarray([tok.encode_special(s) for s in SPECIAL_TOKENS])
    m.lm_head[...] = (jax.random.normal(k1, m.lm_head.shape) / 8.0).at[:, specials].set(0.0)
    m.h.attn_c_proj[...] = jax.random.normal(k2, m.h.attn_c_proj.shape) / 8.0
    m.h.mlp_c_proj[...] = jax.random.normal(k3, m.h.mlp_c_proj.shape) / 16.0
    return m


def greedy_reply(model, ids, n=MAX_TOKENS) -> list[int]:
    """Reference: n argmax steps of the full (uncached) forward, not the Engine the CLI runs."""
    return greedy_decode(model, ids, n)


def user_turn(tok, text):
    return [
        tok.encode_special("<|user_start|>"),
        *tok.encode(text),
        tok.encode_special("<|user_end|>"),
        tok.encode_special("<|assistant_start|>"),
    ]


def test_scripted_session(tok, model):
    end = tok.encode_special("<|assistant_end|>")
    stdin = io.StringIO("Hello world\n\nclear\nthe fox\nquick dog\nquit\nnever read\n")
    out = io.StringIO()
    conv = chat.run_chat(model, tok, temperature=0.0, max_tokens=MAX_TOKENS, stdin=stdin, stdout=out)

    # Expected conversation, built turn by turn with the reference decoder.
    first = [tok.get_bos_token_id(), *user_turn(tok, "Hello world")]
    r0 = greedy_reply(model, first)
    conv1 = [tok.get_bos_token_id(), *user_turn(tok, "the fox")]
    r1 = greedy_reply(model, conv1)
    conv2 = conv1 + r1 + [end] + user_turn(tok, "quick dog")
    r2 = greedy_reply(model, conv2)
    assert conv == conv2 + r2 + [end]  # "clear" dropped the first exchange

    text = out.getvalue()
    assert "NanoChat Interactive Mode" in text
    turns = text.split("\nAssistant: ")
    assert len(turns) == 4
    for part, r in zip(turns[1:], (r0, r1, r2)):
        assert part.startswith(tok.decode(r) + "\n")
    assert "Conversation cleared." in turns[1] and "Conversation cleared." not in turns[2]
    assert text.rstrip().endswith("Goodbye!")


def test_end_of_input_leaves(tok, model):
    out = io.StringIO()
    conv = chat.run_chat(model, tok, temperature=0.0, max_tokens=3, stdin=io.StringIO("hi"), stdout=out)
    assert conv[-1] == tok.encode_special("<|assistant_end|>")
    assert out.getvalue().rstrip().endswith("Goodbye!")


def test_one_shot_prompt_from_checkpoint(tok, model, tmp_path, monkeypatch, capsys):
    from nanochat_jax.checkpoint import save_model_checkpoint

    monkeypatch.setenv("NANOCHAT_JAX_BASE_DIR", str(tmp_path))
    tok_dir = tmp_path / "tok"
    tok.save(tok_dir)
    save_model_checkpoint(model, {"tokenizer_dir": str(tok_dir)}, tmp_path / "chatsft_checkpoints" / "d2", step=5)

    assert chat.main(["-p", "the fox", "-t", "0", "-m", str(MAX_TOKENS)]) == 0
    reply = greedy_reply(model, [tok.get_bos_token_id(), *user_turn(tok, "the fox")])
    assert capsys.readouterr().out == tok.decode(reply) + "\n"


def test_missing_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_JAX_BASE_DIR", str(tmp_path))
    with pytest.raises(CheckpointNotFoundError) as info:
        chat.main(["-p", "hi"])
    assert str(tmp_path / "chatsft_checkpoints") in str(info.value) and "python -m train.sft" in str(info.value)


def test_module_entry_point_reports_missing_checkpoint(tmp_path):
    env = {**os.environ, "NANOCHAT_JAX_BASE_DIR": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "nanochat_jax.chat", "-i", "base", "-p", "hi"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert str(tmp_path / "base_checkpoints") in proc.stderr
    assert "python -m train.pretrain" in proc.stderr
