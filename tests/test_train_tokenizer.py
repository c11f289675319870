"""Tests for train.tokenizer: which texts it trains on, the end-to-end run, its CLI and config forms, its errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from text_helpers import make_docs

from nanochat_jax.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]

def write_shards(data_dir: Path) -> tuple[list[str], list[str]]:
    """Two tiny shards: train (two row groups) and validation (with a marker)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    train_docs = make_docs(300, seed=1)
    train_docs[5] = "LONGDOC " * 3000  # 24,000 chars: exercises doc_cap
    val_docs = make_docs(60, seed=2, marker="VALMARKER ")
    pq.write_table(pa.table({"text": train_docs}), data_dir / "shard_00000.parquet", row_group_size=150)
    pq.write_table(pa.table({"text": val_docs}), data_dir / "shard_00001.parquet")
    return train_docs, val_docs


def test_iter_train_texts_caps_and_uses_train_split_only(tmp_path):
    from nanochat_jax.dataset import parquet_files_for_split
    from train.tokenizer import iter_train_texts

    train_docs, _ = write_shards(tmp_path)
    train_files = parquet_files_for_split("train", tmp_path)
    assert [p.name for p in train_files] == ["shard_00000.parquet"]

    got = list(iter_train_texts(train_files, max_chars=10**9, doc_cap=1000))
    assert got == [d[:1000] for d in train_docs]  # all docs, across both row groups, capped
    budget = 25_000
    got = list(iter_train_texts(train_files, max_chars=budget, doc_cap=1000))
    assert sum(map(len, got)) == budget
    capped = [d[:1000] for d in train_docs]
    assert got[:-1] == capped[: len(got) - 1] and capped[len(got) - 1].startswith(got[-1])
    assert not any("VALMARKER" in d for d in got)


def test_train_tokenizer_end_to_end(tmp_path):
    from train.tokenizer import train_tokenizer

    _, val_docs = write_shards(tmp_path / "data")
    tok, stats = train_tokenizer(tmp_path / "data", tmp_path / "tok", vocab_size=400, max_chars=100_000, doc_cap=2000)
    assert stats["vocab_size"] == 400 == tok.get_vocab_size()
    assert stats["train_chars"] == 100_000
    val_bytes = sum(len(d.encode()) for d in val_docs)
    assert stats["val_bytes"] == val_bytes  # all of the small val shard (< 2 MB)
    assert stats["val_tokens"] == sum(len(direct) for direct in tok.enc.encode_ordinary_batch(val_docs))
    assert stats["bytes_per_token"] == pytest.approx(val_bytes / stats["val_tokens"])
    assert 1.0 < stats["bytes_per_token"] < 8.0
    assert Tokenizer.from_directory(tmp_path / "tok").encode(val_docs[0]) == tok.encode(val_docs[0])


def test_train_tokenizer_cli(tmp_path):
    write_shards(tmp_path / "data")
    cmd = [sys.executable, "-m", "train.tokenizer", "--vocab_size", "300", "--max_chars", "50000",
           "--doc_cap", "500", "--data_dir", str(tmp_path / "data"), "--out", str(tmp_path / "tok")]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "bytes/token" in res.stdout and "on 50,000 chars" in res.stdout
    assert Tokenizer.from_directory(tmp_path / "tok").get_vocab_size() == 300


def test_train_tokenizer_needs_two_shards(tmp_path):
    from train.tokenizer import train_tokenizer

    pq.write_table(pa.table({"text": ["only one"]}), tmp_path / "shard_00000.parquet")
    with pytest.raises(FileNotFoundError, match=r"training needs at least 2.*nanochat_jax.dataset -n 8"):
        train_tokenizer(tmp_path, tmp_path / "tok", vocab_size=300, max_chars=1000)
    with pytest.raises(FileNotFoundError, match=r"no parquet shards found in .*nothing.*data_dir=\"sample\""):
        train_tokenizer(tmp_path / "nothing", tmp_path / "tok", vocab_size=300, max_chars=1000)


def test_train_tokenizer_cli_error_is_a_message(tmp_path):
    from train.tokenizer import main

    with pytest.raises(SystemExit, match=r"^error: no parquet shards found"):
        main(["--data_dir", str(tmp_path), "--out", str(tmp_path / "tok")])
    with pytest.raises(SystemExit, match=r"^error: unknown config field 'data.tokenizer_vocab'.*data.tokenizer_vocab_size"):
        main([f"--config={REPO / 'configs/tiny.py'}", "--config.data.tokenizer_vocab=300"])


def test_train_tokenizer_from_config(tmp_path, monkeypatch):
    """`--config` trains what the config's pretraining run will look for, where it will look."""
    from train.tokenizer import main

    monkeypatch.setenv("NANOCHAT_JAX_BASE_DIR", str(tmp_path / "base"))
    write_shards(tmp_path / "data")
    stats = main([f"--config={REPO / 'configs/tiny.py'}", f"--config.data.data_dir={tmp_path / 'data'}",
                  "--config.data.tokenizer_vocab_size=300", "--config.data.tokenizer_max_chars=20000"])  # fmt: skip
    assert stats["train_chars"] == 20_000 and stats["vocab_size"] == 300
    assert Path(stats["out_dir"]) == tmp_path / "base" / "sample_tokenizer"  # tiny.py's tokenizer_dir
    assert Tokenizer.from_directory(tmp_path / "base" / "sample_tokenizer").get_vocab_size() == 300
