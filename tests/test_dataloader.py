"""Tests for nanochat_jax.dataloader (+ packing, parquet_docs): packing semantics, striding, exact resume (bad input: test_dataloader_inputs).

Expected values are computed here from the parquet files with pyarrow and a
byte-level tokenizer (token = UTF-8 byte, BOS = 256), and for best-fit by a
plain-Python transcription of nanochat HEAD's loop, never by calling the code
under test.
"""

from __future__ import annotations

import gc
import itertools
import json
import random
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from nanochat_jax import dataloader as dl
from nanochat_jax import packing, parquet_docs

BOS = 256


class ByteTokenizer:
    """The three methods the loader may use, over a byte-level tiktoken encoding."""

    def __init__(self):
        self.enc = tiktoken.Encoding(
            name="bytes", pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)},
            special_tokens={"<|bos|>": BOS},
        )
        self.calls = 0

    def encode(self, texts, prepend=None, num_threads=8):
        assert isinstance(texts, list)
        self.calls += 1
        bos = self.enc.encode_single_token(prepend) if isinstance(prepend, str) else prepend
        return [[bos] + ids for ids in self.enc.encode_ordinary_batch(texts, num_threads=num_threads)]

    def get_bos_token_id(self):
        return BOS

    def get_vocab_size(self):
        return 257


def write_shard(path, docs, rows_per_group):
    pq.write_table(pa.table({"text": pa.array(docs, type=pa.string())}), path, row_group_size=rows_per_group)


def make_docs(n, seed):
    """Unique documents of 0–45 characters, about 1 in 8 empty."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        if rng.random() < 0.12:
            docs.append("")
        else:
            docs.append(f"<{seed}.{i}>" + "".join(rng.choice("abcdefgh \n") for _ in range(rng.randint(0, 38))))
    return docs


@pytest.fixture
def corpus(tmp_path):
    """3 train shards (row groups of 5: 15 row groups, some partial) + 1 val shard."""
    d = tmp_path / "data"
    d.mkdir()
    for i, n in enumerate([23, 17, 30]):
        write_shard(d / f"shard_{i:05d}.parquet", make_docs(n, seed=i), 5)
    write_shard(d / "shard_00003.parquet", make_docs(12, seed=99), 4)
    return d


@pytest.fixture
def loaders():
    """Build loaders through this so every one is closed (no prefetch thread left behind)."""
    made = []

    def build(*args, **kwargs):
        kwargs.setdefault("streams", 1)
        kwargs.setdefault("process_index", 0)
        kwargs.setdefault("process_count", 1)
        loader = dl.build_pretrain_loader(*args, **kwargs)
        made.append(loader)
        return loader

    yield build
    for loader in made:
        loader.close()
    made.clear()
    gc.collect()


# ----------------------------------------------------------------------------- independent expectations


def expected_groups(files, process_index, process_count):
    """(path, row group) pairs of the split, flattened, strided — computed from footers here."""
    pairs = [(f, g) for f in files for g in range(pq.ParquetFile(f).num_row_groups)]
    return pairs[process_index::process_count]


def expected_chunks(files, process_index, process_count, chunk):
    """Tokenized non-empty docs per tokenizer batch, forever: what nanochat feeds its buffer."""
    groups = expected_groups(files, process_index, process_count)
    for _epoch in itertools.count():
        for path, g in groups:
            texts = pq.ParquetFile(path).read_row_group(g).column("text").to_pylist()
            for s in range(0, len(texts), chunk):
                docs = [[BOS] + list(t.encode("utf-8")) for t in texts[s:s + chunk] if t]
                if docs:
                    yield docs


def expected_stream(files, process_index, process_count, n_tokens):
    out = []
    for docs in expected_chunks(files, process_index, process_count, 7):
        for d in docs:
            out.extend(d)
        if len(out) >= n_tokens:
            return np.array(out[:n_tokens])


def reference_bestfit(chunks, B, T, buffer_size, n_batches):
    """nanochat HEAD's best-fit loop, transcribed with plain lists."""
    buf, batches = [], []
    for _ in range(n_batches):
        rows = []
        for _ in range(B):
            row = []
            while len(row) < T + 1:
                while len(buf) < buffer_size:
                    buf.extend(next(chunks))
                remaining = T + 1 - len(row)
                best, best_len = -1, 0
                for i, doc in enumerate(buf):
                    if best_len < len(doc) <= remaining:
                        best, best_len = i, len(doc)
                if best >= 0:
                    row.extend(buf.pop(best))
                else:
                    shortest = min(range(len(buf)), key=lambda i: len(buf[i]))
                    row.extend(buf.pop(shortest)[:remaining])
            rows.append(row)
        batches.append(np.array(rows))
    return batches


def take(loader, n):
    return [next(loader) for _ in range(n)]


def train_files(d):
    return sorted(d.glob("*.parquet"))[:-1]


# ----------------------------------------------------------------------------- packing semantics


@pytest.mark.parametrize("process_count", [1, 3])
def test_stream_reproduces_concatenated_token_stream(corpus, loaders, process_count):
    B, T, n = 4, 16, 40  # ~2 epochs per process
    for p in range(process_count):
        loader = loaders(ByteTokenizer(), corpus, "train", B * process_count, T, streams=process_count,
                         process_index=p, process_count=process_count, tokenizer_batch_size=3)  # process p: stream p
        got = take(loader, n)
        stream = expected_stream(train_files(corpus), p, process_count, n * (B * T + 1))
        assert loader.get_state()["stream_states"][str(p)]["epoch"] >= 1, "test should cross an epoch"
        for i, (x, y) in enumerate(got):
            step = stream[i * (B * T + 1):(i + 1) * (B * T + 1)]
            assert x.dtype == np.int32 and y.dtype == np.int32
            assert x.shape == (B, T) and y.shape == (B, T)
            np.testing.assert_array_equal(x, step[:-1].reshape(B, T))
            np.testing.assert_array_equal(y, step[1:].reshape(B, T))


def test_val_split_is_last_shard(corpus, loaders):
    B, T = 2, 8
    got = take(loaders(ByteTokenizer(), corpus, "val", B, T, prefetch=0), 5)
    stream = expected_stream([sorted(corpus.glob("*.parquet"))[-1]], 0, 1, 5 * (B * T + 1))
    np.testing.assert_array_equal(np.concatenate([np.append(x.ravel(), y[-1, -1]) for x, y in got]), stream)


@pytest.mark.parametrize("process_count", [1, 2])
def test_bestfit_matches_nanochat_reference(corpus, loaders, process_count):
    B, T, buf, chunk, n = 3, 20, 6, 4, 25
    for p in range(process_count):
        loader = loaders(ByteTokenizer(), corpus, "train", B * process_count, T, mode="bestfit", buffer_size=buf,
                         tokenizer_batch_size=chunk, streams=process_count, process_index=p, process_count=process_count)
        got = take(loader, n)
        assert loader.get_state()["stream_states"][str(p)]["epoch"] >= 1, "test should cross an epoch"
        ref = reference_bestfit(expected_chunks(train_files(corpus), p, process_count, chunk), B, T, buf, n)
        for (x, y), rows in zip(got, ref):
            np.testing.assert_array_equal(x, rows[:, :-1])
            np.testing.assert_array_equal(y, rows[:, 1:])


def test_bestfit_rows_start_with_bos_and_are_made_of_documents(corpus, loaders):
    """Each row splits at BOS into whole documents, the last possibly cropped: no padding."""
    B, T = 4, 24
    docs = {bytes(d[1:]) for d in itertools.chain.from_iterable(
        itertools.islice(expected_chunks(train_files(corpus), 0, 1, 5), 100))}
    loader = loaders(ByteTokenizer(), corpus, "train", B, T, mode="bestfit", buffer_size=10)
    cropped_rows = 0
    for x, y in take(loader, 12):
        rows = np.concatenate([x, y[:, -1:]], axis=1)
        assert (rows[:, 0] == BOS).all()
        for row in rows.tolist():
            starts = [i for i, t in enumerate(row) if t == BOS] + [len(row)]
            pieces = [bytes(row[a + 1:b]) for a, b in zip(starts, starts[1:])]
            assert all(p in docs for p in pieces[:-1])
            if pieces[-1] not in docs:
                cropped_rows += 1
                assert any(d.startswith(pieces[-1]) for d in docs)
    assert cropped_rows > 0  # the corpus has documents longer than a row, so cropping must happen


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.integers(1, 45))
def test_best_fit_choice_is_largest_fitting_else_shortest(lengths, remaining):
    fitting = [(n, -i) for i, n in enumerate(lengths) if n <= remaining]
    if fitting:
        expect = (-max(fitting)[1], True)
    else:
        expect = (min(range(len(lengths)), key=lambda i: lengths[i]), False)
    assert packing.best_fit_choice(np.array(lengths), remaining) == expect


# ----------------------------------------------------------------------------- striding


def test_processes_read_disjoint_row_groups_covering_the_split(corpus):
    files = train_files(corpus)
    everything = [(f, g) for f in files for g in range(pq.ParquetFile(f).num_row_groups)]
    assert len(everything) == 15
    refs = parquet_docs.split_row_groups(files)
    for n in (1, 2, 3, 4, 15):
        per_process = [[(r.path, r.row_group) for r in parquet_docs.strided_row_groups(refs, p, n)] for p in range(n)]
        flat = [x for part in per_process for x in part]
        assert len(flat) == len(set(flat)) == len(everything)
        assert set(flat) == set(everything)
        for p, part in enumerate(per_process):
            assert part == everything[p::n]


def test_more_streams_than_row_groups_is_an_error(corpus, loaders):
    with pytest.raises(ValueError, match="row groups"):
        loaders(ByteTokenizer(), corpus, "train", 16, 8, streams=16)


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize("mode", ["stream", "bestfit"])
def test_exact_resume_across_epoch_boundary_with_prefetch(corpus, loaders, mode):
    B, T = 4, 16
    kw = dict(mode=mode, buffer_size=8, tokenizer_batch_size=3, prefetch=2)
    probe = loaders(ByteTokenizer(), corpus, "train", B, T, **{**kw, "prefetch": 0})
    epochs = []
    for _ in range(60):
        next(probe)
        epochs.append(probe.get_state()["stream_states"]["0"]["epoch"])
    boundary = epochs.index(1)  # after batch boundary+1 the loader is in epoch 1
    m = 6
    full = take(loaders(ByteTokenizer(), corpus, "train", B, T, **kw), boundary + 4 + m)
    for k in (1, boundary - 2, boundary, boundary + 1, boundary + 4):
        first = loaders(ByteTokenizer(), corpus, "train", B, T, **kw)
        head = take(first, k)
        time.sleep(0.05)  # let the prefetch thread run ahead of what was consumed
        state = first.get_state()
        assert state["batches"] == k
        state = json.loads(json.dumps(state))
        resumed = loaders(ByteTokenizer(), corpus, "train", B, T, state=state, **kw)
        tail = take(resumed, m)
        for a, b in zip(head + tail, full[:k + m]):
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
    assert epochs[boundary - 2] == 0 and epochs[boundary + 4 + m - 1] >= 1


class Conversations:
    """A midtraining-like source: one rendered conversation per chunk, keyed ``(epoch, index)``, cursor = next key."""

    def __init__(self, n, cursor=(0, 0)):
        self.n, self.cursor = n, cursor

    @staticmethod
    def render(key):
        return [BOS] + [100 + key[1]] * (key[1] % 6 + 1)

    def __next__(self):
        key = epoch, i = self.cursor
        self.cursor = (epoch + (i + 1) // self.n, (i + 1) % self.n)
        return [key], [self.render(key)]


@pytest.mark.parametrize("mode", ["stream", "bestfit"])
def test_packers_resume_any_keyed_token_source(mode):
    """The packers know nothing of parquet: keys and offsets (plus the source's cursor) resume them exactly."""
    def packer(source):
        return packing.StreamPacker(source) if mode == "stream" else packing.BestFitPacker(source, 4)

    source = Conversations(5)
    first = packer(source)
    head = [first.next_batch(2, 6) for _ in range(3)]
    cursor = source.cursor
    key, offset = (first.position() or (cursor, 0)) if mode == "stream" else (cursor, 0)
    buffered = [] if mode == "stream" else list(first.keys)
    tail = [first.next_batch(2, 6) for _ in range(4)]
    resumed = packer(Conversations(5, cursor=key))
    if mode == "stream":
        resumed.reset(key, offset)
    else:
        resumed.reset(buffered, [Conversations.render(k) for k in buffered])
    for a, b in zip([resumed.next_batch(2, 6) for _ in range(4)], tail):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    x, y = head[0]
    if mode == "stream":  # the conversations, concatenated in order
        stream = list(itertools.chain.from_iterable(Conversations.render((0, i % 5)) for i in range(12)))
        np.testing.assert_array_equal(x.ravel(), stream[:12])
    else:
        chunks = ([Conversations.render((i // 5, i % 5))] for i in itertools.count())
        np.testing.assert_array_equal(x, reference_bestfit(chunks, 2, 6, 4, 1)[0][:, :-1])


@pytest.mark.parametrize("mode", ["stream", "bestfit"])
def test_set_state_rewinds_a_running_loader(corpus, loaders, mode):
    loader = loaders(ByteTokenizer(), corpus, "train", 3, 12, mode=mode, buffer_size=5)
    take(loader, 4)
    state = loader.get_state()
    expected = take(loader, 5)
    take(loader, 7)
    loader.set_state(state)
    for a, b in zip(take(loader, 5), expected):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_state_holds_positions_not_tokens(corpus, loaders):
    loader = loaders(ByteTokenizer(), corpus, "train", 4, 16, mode="bestfit", buffer_size=40)
    take(loader, 3)
    state = loader.get_state()
    stream = state["stream_states"]["0"]
    assert len(stream["buffer"]) >= 2  # 40 buffered docs span several row groups of 5
    text = json.dumps(state)
    assert len(text) < 1000
    for epoch, group, bitmap in stream["buffer"]:
        assert isinstance(epoch, int) and isinstance(group, int) and isinstance(bitmap, str)
    numbers = [v for v in [*state.values(), *stream.values()] if isinstance(v, list) and v and isinstance(v[0], int)]
    assert numbers == []  # no token lists anywhere


def test_stream_state_continues_with_another_batch_shape(corpus, loaders):
    """The stream position does not depend on B, T: a resumed loader continues the same stream."""
    loader = loaders(ByteTokenizer(), corpus, "train", 4, 16)
    take(loader, 9)
    resumed = loaders(ByteTokenizer(), corpus, "train", 2, 8, state=loader.get_state())
    x, y = next(resumed)
    stream = expected_stream(train_files(corpus), 0, 1, 9 * 65 + 17)
    np.testing.assert_array_equal(x.ravel(), stream[9 * 65:9 * 65 + 16])
    np.testing.assert_array_equal(y.ravel(), stream[9 * 65 + 1:])


@pytest.mark.parametrize("change, field", [
    (dict(mode="bestfit"), "mode"),
    (dict(streams=2), "streams"),
])
def test_state_from_a_different_setup_is_refused(corpus, loaders, change, field):
    loader = loaders(ByteTokenizer(), corpus, "train", 2, 8)
    take(loader, 2)
    with pytest.raises(ValueError, match=field):
        loaders(ByteTokenizer(), corpus, "train", 2, 8, state=loader.get_state(), **change)


def test_state_from_different_shards_is_refused(corpus, tmp_path, loaders):
    loader = loaders(ByteTokenizer(), corpus, "train", 2, 8)
    take(loader, 2)
    state = loader.get_state()
    write_shard(corpus / "shard_00004.parquet", make_docs(10, seed=7), 5)  # old val becomes train
    with pytest.raises(ValueError, match="split"):
        loaders(ByteTokenizer(), corpus, "train", 2, 8, state=state)


def test_orbax_checkpoint_roundtrip(corpus, tmp_path, loaders):
    ocp = pytest.importorskip("orbax.checkpoint")
    import grain

    kw = dict(mode="bestfit", buffer_size=8, tokenizer_batch_size=3)
    expected = take(loaders(ByteTokenizer(), corpus, "train", 2, 16, **kw), 10)
    loader = loaders(ByteTokenizer(), corpus, "train", 2, 16, **kw)
    take(loader, 6)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(6, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(loader)))
        mngr.wait_until_finished()
        fresh = loaders(ByteTokenizer(), corpus, "train", 2, 16, **kw)
        mngr.restore(6, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    for a, b in zip(take(fresh, 4), expected[6:]):
        np.testing.assert_array_equal(a[0], b[0])


def test_global_batches_are_jax_arrays(corpus, loaders):
    from nanochat_jax.data_streams import iter_global_batches
    from nanochat_jax.sharding import make_mesh

    mesh = make_mesh()
    n = mesh.devices.size
    x_np, y_np = next(loaders(ByteTokenizer(), corpus, "train", 2 * n, 8))
    x, y = next(iter_global_batches(loaders(ByteTokenizer(), corpus, "train", 2 * n, 8), mesh))
    assert x.shape == (2 * n, 8) and str(x.dtype) == "int32"
    np.testing.assert_array_equal(np.asarray(x), x_np)
    np.testing.assert_array_equal(np.asarray(y), y_np)
