"""Data streams (nanochat_jax.data_streams) in the pretraining loader: each process's rows, states that resume anywhere.

Expectations are built here: the row ranges by hand, and each stream's tokens
from the parquet files with pyarrow and the byte tokenizer of test_dataloader
(stream ``k`` of ``S`` = the concatenated documents of row groups ``k, k+S, …``,
``R/S`` rows of ``T+1`` tokens per step in nanochat's classic arithmetic).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from nanochat_jax import data_streams as dl
from nanochat_jax.config import ConfigError
from nanochat_jax.data_streams import StreamBatches
from nanochat_jax.trainer import gather_states
from test_dataloader import ByteTokenizer, corpus, expected_stream, loaders, take, train_files  # noqa: F401 (fixtures)

T = 8


@pytest.mark.parametrize("R, S, P, want", [
    (8, 4, 2, [(0, 4, [0, 1]), (4, 8, [2, 3])]),  # S a multiple of P: S/P streams each
    (12, 4, 3, [(0, 4, [0, 1]), (4, 8, [1, 2]), (8, 12, [2, 3])]),  # streams 1 and 2 shared by two processes
    (8, 2, 4, [(0, 2, [0]), (2, 4, [0]), (4, 6, [1]), (6, 8, [1])]),  # more processes than streams
    (6, 3, 1, [(0, 6, [0, 1, 2])]),
])
def test_process_rows_and_streams(R, S, P, want):
    assert [(lo, hi, list(ks)) for lo, hi, ks in (dl.process_rows(R, S, p, P) for p in range(P))] == want


@pytest.mark.parametrize("R, S, P", [(8, 3, 1), (6, 3, 4)])
def test_rows_that_do_not_divide_are_a_config_error(R, S, P):
    with pytest.raises(ConfigError, match="data.streams"):
        dl.process_rows(R, S, 0, P)


def test_fit_streams_takes_the_largest_divisor_within_the_row_groups():
    assert dl.fit_streams(8, 16, 4) == 4
    assert dl.fit_streams(8, 12, 5) == 4
    assert dl.fit_streams(8, 10, 3) == 2
    assert dl.fit_streams(8, 7, 30) == 7


def canonical_steps(files, R, S, n):
    """Steps 0..n-1 as ``(R, T)`` inputs: stream k's ``R/S`` rows of each step, streams in order."""
    m = R // S
    per = [expected_stream(files, k, S, n * (m * T + 1)).reshape(n, m * T + 1) for k in range(S)]
    return [np.concatenate([p[s, :-1].reshape(m, T) for p in per]) for s in range(n)]


@pytest.mark.parametrize("R, S, P, A", [(8, 4, 2, 1), (12, 4, 3, 2), (8, 2, 4, 2), (6, 3, 1, 3)])
def test_every_process_gets_its_slice_of_the_canonical_step(corpus, loaders, R, S, P, A):
    want = canonical_steps(train_files(corpus), R, S, 5)
    for p in range(P):
        got = take(loaders(ByteTokenizer(), corpus, "train", R, T, streams=S, process_index=p, process_count=P), 5)
        for s, (x, _) in enumerate(got):
            rows = want[s][p * R // P:(p + 1) * R // P]
            np.testing.assert_array_equal(dl.micro_batches(x, A), rows.reshape(A, R // (P * A), T))


@pytest.mark.parametrize("mode", ["stream", "bestfit"])
@pytest.mark.parametrize("saved_by, resumed_by", [(2, 1), (1, 3), (3, 2)])
def test_merged_states_resume_on_another_process_count(corpus, loaders, mode, saved_by, resumed_by):
    R, S, kw = 12, 4, dict(mode=mode, buffer_size=6, tokenizer_batch_size=3, streams=4)
    whole = take(loaders(ByteTokenizer(), corpus, "train", R, T, **kw), 9)
    states = []
    for p in range(saved_by):
        loader = loaders(ByteTokenizer(), corpus, "train", R, T, process_index=p, process_count=saved_by, **kw)
        take(loader, 4)
        states.append(json.loads(json.dumps(loader.get_state())))
    merged = dl.merge_states(states)
    assert sorted(merged["stream_states"], key=int) == ["0", "1", "2", "3"] and merged["batches"] == 4
    for p in range(resumed_by):
        resumed = loaders(ByteTokenizer(), corpus, "train", R, T, process_index=p, process_count=resumed_by,
                          state=merged, **kw)  # fmt: skip
        for (x, y), (wx, wy) in zip(take(resumed, 5), whole[4:]):
            lo, hi = p * R // resumed_by, (p + 1) * R // resumed_by
            np.testing.assert_array_equal(x, wx[lo:hi])
            np.testing.assert_array_equal(y, wy[lo:hi])


def test_one_process_state_is_not_the_runs(corpus, loaders):
    first = loaders(ByteTokenizer(), corpus, "train", 8, T, streams=4, process_index=0, process_count=2)
    take(first, 2)
    with pytest.raises(ValueError, match=r"no position for data stream\(s\) \[2, 3\]"):
        loaders(ByteTokenizer(), corpus, "train", 8, T, streams=4, process_index=1, process_count=2, state=first.get_state())
    with pytest.raises(ValueError, match="cover 2 of 4 data streams"):
        dl.merge_states([first.get_state()])


def test_states_of_different_steps_or_versions_are_refused(corpus, loaders):
    a = loaders(ByteTokenizer(), corpus, "train", 8, T, streams=4, process_index=0, process_count=2)
    b = loaders(ByteTokenizer(), corpus, "train", 8, T, streams=4, process_index=1, process_count=2)
    take(a, 2), take(b, 3)
    with pytest.raises(ValueError, match="'batches'"):
        dl.merge_states([a.get_state(), b.get_state()])
    old = {**dl.merge_states([a.get_state(), {**b.get_state(), "batches": 2}]), "version": 1}
    with pytest.raises(ValueError, match="'version' is 1 in the state but 2"):
        loaders(ByteTokenizer(), corpus, "train", 8, T, streams=4, state=old)


def test_stream_batches_hand_out_a_step_as_micro_batches(corpus, loaders):
    """The trainer's source: A micro-batches per step, state read only between steps."""
    want = next(loaders(ByteTokenizer(), corpus, "train", 8, T, streams=4))
    source = StreamBatches(loaders(ByteTokenizer(), corpus, "train", 8, T, streams=4), accum=2)
    state = source.get_state()
    first = source.next()
    with pytest.raises(RuntimeError, match="middle of a step"):
        source.get_state()
    second = source.next()
    np.testing.assert_array_equal(np.stack([first["inputs"], second["inputs"]]), want[0].reshape(2, 4, T))
    np.testing.assert_array_equal(np.stack([first["targets"], second["targets"]]), want[1].reshape(2, 4, T))
    assert state["batches"] == 0 and source.get_state()["batches"] == 1


def test_gather_states_round_trips_json_in_one_process():
    state = {"stream_states": {"0": {"buffer": [[0, 3, "AAE="]], "offset": 5}}, "split": {"first": "shard_00000.parquet"}}
    assert gather_states(state) == [state]
