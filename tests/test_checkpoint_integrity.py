"""Checkpoint integrity: real checkpoints corrupted on disk are refused, naming directory, step and array.

Corruptions: a truncated data file, flipped bytes (which Orbax restores
silently without the checksums), a deleted data file, and edited metadata.
Which array a data-file corruption hit is found independently, by reading the
corrupted step with plain Orbax and comparing with the weights that were saved.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from model_helpers import random_gpt
from nanochat_jax import checkpoint
from nanochat_jax.errors import CheckpointCorruptError
from nanochat_jax.gpt import GPTConfig
from nanochat_jax.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = dict(sequence_len=32, n_layer=2, n_head=2, n_kv_head=2, n_embd=64)


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train_from_iterator(iter(["Hi there. The quick brown fox jumps over the lazy dog. " * 8]), vocab_size=300)


@pytest.fixture
def ckpt_dir(tmp_path, tok):
    """base_checkpoints/tiny with intact steps 1 and 2 (different weights) and a tokenizer."""
    tok.save(tmp_path / "tok")
    directory = tmp_path / "base_checkpoints" / "tiny"
    config = GPTConfig(vocab_size=tok.get_vocab_size(), **CONFIG)
    for step in (1, 2):
        checkpoint.save_model_checkpoint(random_gpt(config, seed=step), {"tokenizer_dir": str(tmp_path / "tok")}, directory, step)
    return directory


def named(tree) -> dict:
    return {checkpoint.integrity.leaf_name(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def saved_params(step: int, vocab: int) -> dict:
    model = random_gpt(GPTConfig(vocab_size=vocab, **CONFIG), seed=step)
    return named(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def largest_data_file(step_dir: Path) -> Path:
    return max((p for p in (step_dir / "params").rglob("*") if p.is_file() and p.parent.name == "d"), key=lambda p: p.stat().st_size)


def changed_arrays(step_dir: Path, vocab: int) -> list[str]:
    """Arrays that plain Orbax (no integrity checks) restores differently from what was saved."""
    flat = named(ocp.StandardCheckpointer().restore(step_dir / "params"))
    want = saved_params(2, vocab)
    return sorted(k for k in want if not np.array_equal(flat[k], want[k]))


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def edit_checksum(step_dir: Path) -> None:
    meta_file = step_dir / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["checksums"]["params"]["wte"] = "0" * 16
    meta_file.write_text(json.dumps(meta))


def expect_refused(directory: Path, *, arrays: str) -> str:
    with pytest.raises(CheckpointCorruptError) as info:
        checkpoint.load_model_checkpoint(directory)
    msg = str(info.value)
    assert f"checkpoint {directory} step 2 is corrupt" in msg and msg.endswith("Intact steps: [1] (pick one with -s/--step)"), msg
    assert re.search(rf": {arrays}\. Intact", msg), msg
    return msg


def test_intact_checkpoint_loads_bit_exact(ckpt_dir, tok):
    model, meta = checkpoint.load_model_checkpoint(ckpt_dir)
    assert meta["step"] == 2 and set(meta["checksums"]["params"]) == set(saved_params(2, tok.get_vocab_size()))
    got = named(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    for name, want in saved_params(2, tok.get_vocab_size()).items():
        np.testing.assert_array_equal(got[name], want)


def test_flipped_bytes_are_caught_and_the_array_named(ckpt_dir, tok):
    flip_bytes(largest_data_file(ckpt_dir / "2"))
    hit = changed_arrays(ckpt_dir / "2", tok.get_vocab_size())
    assert hit  # plain Orbax restores the flipped data without complaint
    msg = expect_refused(ckpt_dir, arrays=re.escape(", ".join(hit)))
    assert "params checksum mismatch" in msg


@pytest.mark.parametrize("damage", [truncate, os.remove], ids=["truncated", "deleted"])
def test_unreadable_data_file_is_caught(ckpt_dir, tok, damage):
    damage(largest_data_file(ckpt_dir / "2"))
    names = "|".join(re.escape(n) for n in saved_params(2, tok.get_vocab_size()))
    assert "unreadable" in expect_refused(ckpt_dir, arrays=f"({names})(, ({names}))*")


def test_edited_checksum_metadata_is_caught(ckpt_dir):
    edit_checksum(ckpt_dir / "2")
    assert "params checksum mismatch" in expect_refused(ckpt_dir, arrays="wte")


def test_unparseable_meta_is_caught(ckpt_dir):
    (ckpt_dir / "2" / "meta" / "metadata").write_text('{"step": 2, "model_config": ')
    with pytest.raises(CheckpointCorruptError, match=rf"checkpoint {re.escape(str(ckpt_dir))} step 2 is corrupt: unreadable.*: meta"):
        checkpoint.load_model_checkpoint(ckpt_dir)


def test_nan_params_are_refused(tmp_path):
    model = random_gpt(GPTConfig(vocab_size=64, **CONFIG))
    model.lm_head[...] = model.lm_head[...].at[3, 5].set(np.inf)
    checkpoint.save_model_checkpoint(model, {}, tmp_path / "ck", 7)
    with pytest.raises(CheckpointCorruptError, match=r"step 7 is corrupt: params hold NaN/inf: lm_head\. Intact steps: \[\]"):
        checkpoint.load_model_checkpoint(tmp_path / "ck")


def test_resume_falls_back_to_the_newest_intact_step(ckpt_dir, tok, capsys):
    flip_bytes(largest_data_file(ckpt_dir / "2"))
    ckpt = checkpoint.Checkpointer(ckpt_dir, keep=None, async_save=False)
    abstract = checkpoint.abstract_params(GPTConfig(vocab_size=tok.get_vocab_size(), **CONFIG))
    step, _ = ckpt.restore_meta()  # the trainer's sequence: newest meta, then its arrays
    assert step == 2
    restored = ckpt.restore(step, abstract_params=abstract)
    assert restored["step"] == 1 and restored["meta"]["step"] == 1
    np.testing.assert_array_equal(np.asarray(restored["params"]["wte"]), saved_params(1, tok.get_vocab_size())["wte"])
    assert "Falling back to step 1" in capsys.readouterr().out
    with pytest.raises(CheckpointCorruptError, match="step 2 is corrupt"):  # asked for by number: no fallback
        ckpt.restore(2, abstract_params=abstract, fallback=False)
    ckpt.close()


def test_chat_cli_refuses_the_corrupted_checkpoint(ckpt_dir, tok):
    flip_bytes(largest_data_file(ckpt_dir / "2"))
    hit = changed_arrays(ckpt_dir / "2", tok.get_vocab_size())
    env = {**os.environ, "NANOCHAT_JAX_BASE_DIR": str(ckpt_dir.parents[1]), "JAX_PLATFORMS": "cpu"}
    env.pop("NANOCHAT_JAX_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "nanochat_jax.chat", "-i", "base", "-g", "tiny", "-p", "Hi"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, check=False)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"step 2 is corrupt: params checksum mismatch: {', '.join(hit)}. Intact steps: [1]" in lines[0], lines[0]
