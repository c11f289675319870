"""Bad input to the pretraining loader: missing data, corrupt and empty shards, invalid UTF-8, bad arguments;
and the embedded corpus and the project tokenizer feeding it (fixtures from test_dataloader)."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_dataloader import BOS, ByteTokenizer, corpus, loaders, take, train_files, write_shard  # noqa: F401 (fixtures)

from nanochat_jax.dataset import CorruptShardError, DataNotFoundError

def test_no_data_says_how_to_get_some(tmp_path, loaders, monkeypatch):
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(DataNotFoundError) as e:
        loaders(ByteTokenizer(), empty, "train", 2, 8)
    assert "python -m nanochat_jax.dataset -n" in str(e.value) and '"sample"' in str(e.value)
    monkeypatch.setenv("NANOCHAT_JAX_BASE_DIR", str(tmp_path / "base"))
    with pytest.raises(DataNotFoundError, match="base_data"):
        loaders(ByteTokenizer(), None, "train", 2, 8)


def test_truncated_shard_is_named(corpus, loaders):
    bad = corpus / "shard_00001.parquet"
    bad.write_bytes(bad.read_bytes()[:-30])
    with pytest.raises(CorruptShardError, match="shard_00001.parquet"):
        loaders(ByteTokenizer(), corpus, "train", 2, 8)


def test_corrupt_data_page_is_named_when_read(tmp_path, loaders):
    d = tmp_path / "d"
    d.mkdir()
    docs = [f"document {i} " + "xyz" * (i % 40) for i in range(60)]
    write_shard(d / "shard_00000.parquet", docs, 10)
    write_shard(d / "shard_00001.parquet", docs[:10], 10)
    path = d / "shard_00000.parquet"
    col = pq.ParquetFile(path).metadata.row_group(1).column(0)
    data = bytearray(path.read_bytes())
    start = col.data_page_offset
    data[start:start + col.total_compressed_size] = b"\xab" * col.total_compressed_size
    path.write_bytes(bytes(data))
    loader = loaders(ByteTokenizer(), d, "train", 2, 32, prefetch=2)  # footer is fine
    with pytest.raises(CorruptShardError, match="shard_00000.parquet"):
        take(loader, 20)


def test_empty_documents_are_skipped(tmp_path, loaders):
    d = tmp_path / "d"
    d.mkdir()
    write_shard(d / "shard_00000.parquet", ["", "ab", "", "", "c", None, "de", ""], 3)
    write_shard(d / "shard_00001.parquet", ["val"], 1)
    x, y = next(loaders(ByteTokenizer(), d, "train", 1, 10))
    stream = [BOS, *b"ab", BOS, *b"c", BOS, *b"de", BOS, *b"ab"]  # epoch 2 starts after "de"
    np.testing.assert_array_equal(x[0], stream[:10])
    np.testing.assert_array_equal(y[0], stream[1:])


def test_only_empty_documents_is_an_error(tmp_path, loaders):
    d = tmp_path / "d"
    d.mkdir()
    write_shard(d / "shard_00000.parquet", ["", "", ""], 2)
    write_shard(d / "shard_00001.parquet", ["val"], 1)
    with pytest.raises(ValueError, match="empty"):
        next(loaders(ByteTokenizer(), d, "train", 1, 4, prefetch=0))


def test_invalid_utf8_is_replaced(tmp_path, loaders):
    d = tmp_path / "d"
    d.mkdir()
    raw = pa.array([b"ok \xff\xfe end", b"fine"], type=pa.binary()).view(pa.string())  # pyarrow's cast would refuse
    pq.write_table(pa.table({"text": raw}), d / "shard_00000.parquet")
    write_shard(d / "shard_00001.parquet", ["val"], 1)
    x, y = next(loaders(ByteTokenizer(), d, "train", 1, 18, prefetch=0))
    expected = [BOS] + list("ok \ufffd\ufffd end".encode()) + [BOS] + list(b"fine")
    np.testing.assert_array_equal(x[0], expected[:18])
    np.testing.assert_array_equal(y[0], expected[1:])


def test_bad_arguments_are_rejected(corpus, loaders):
    with pytest.raises(ValueError, match="mode"):
        loaders(ByteTokenizer(), corpus, "train", 2, 8, mode="padded")
    with pytest.raises(ValueError, match="split"):
        loaders(ByteTokenizer(), corpus, "test", 2, 8)


@pytest.mark.parametrize("mode, split", [("stream", "train"), ("bestfit", "val")])
def test_embedded_sample_corpus_feeds_the_loader(loaders, mode, split):
    x, y = next(loaders(ByteTokenizer(), "sample", split, 2, 256, mode=mode, buffer_size=50, prefetch=0))
    assert x.shape == (2, 256)
    if mode == "bestfit":
        assert (x[:, 0] == BOS).all()
    text = bytes(t for t in x.ravel().tolist() if t != BOS).decode("utf-8", errors="replace")
    assert sum(c.isalpha() for c in text) > 0.6 * len(text)  # English prose, not noise


def test_works_with_the_project_tokenizer(corpus, loaders):
    tokenizer_mod = pytest.importorskip("nanochat_jax.tokenizer")
    texts = [t for f in train_files(corpus) for t in pq.read_table(f).column("text").to_pylist() if t]
    tok = tokenizer_mod.Tokenizer.train_from_iterator(iter(texts), vocab_size=300)
    B, T = 2, 16
    x, y = next(loaders(tok, corpus, "train", B, T, prefetch=0))
    stream = list(itertools.chain.from_iterable(tok.encode(texts, prepend=tok.get_bos_token_id())))
    np.testing.assert_array_equal(x.ravel(), stream[:B * T])
    np.testing.assert_array_equal(y.ravel(), stream[1:B * T + 1])
