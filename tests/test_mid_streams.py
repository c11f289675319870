"""Midtraining's data streams (chat_batches.MidBatches): the same rows, progress and end on every topology.

Expectations are built here from the conversations: their tokens from the
special-token spec (test_chat_batches.spec_tokens), stream ``k`` of ``S`` the
concatenation of conversations ``k, k+S, …`` (cycling), each step ``R/S·T+1`` of
its tokens cut into ``R/S`` rows; nanochat's mid_data_generator is re-written here
for the check that ``S = P`` ranks give its rows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from nanochat_jax.chat_batches import MidBatches
from nanochat_jax.data_streams import StreamBatches, merge_states
from test_chat_batches import conversations, spec_tokens, tok

T = 8
CONVS = conversations(23)  # not a multiple of any stream count used here, so streams differ in length
TOKENS = [spec_tokens(c)[0] for c in CONVS]


def stream_tokens(k: int, S: int, n: int) -> np.ndarray:
    """The first ``n`` tokens of stream ``k``: conversations k, k+S, … (wrapping past the end) concatenated."""
    out, j = [], 0
    while len(out) < n:
        out += TOKENS[(k + j * S) % len(CONVS)]
        j += 1
    return np.asarray(out[:n])


def canonical_steps(R: int, S: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Steps 0..n-1 as ``(R, T)`` inputs and targets: stream 0's R/S rows, then stream 1's, …"""
    m = R // S
    per = [stream_tokens(k, S, n * (m * T + 1)).reshape(n, m * T + 1) for k in range(S)]
    return [(np.concatenate([p[s, :-1].reshape(m, T) for p in per]), np.concatenate([p[s, 1:].reshape(m, T) for p in per]))
            for s in range(n)]  # fmt: skip


def mid_batches(R, S, P, p, state=None, convs=CONVS):
    return MidBatches(convs, tok(), R, T, streams=S, process_index=p, process_count=P, state=state)


def steps_of(source: StreamBatches, A: int, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` steps of a trainer source: A micro-batches each, stacked ``(A, rows, T)``."""
    out = []
    for _ in range(n):
        micro = [source.next() for _ in range(A)]
        out.append((np.stack([b["inputs"] for b in micro]), np.stack([b["targets"] for b in micro])))
    return out


@pytest.mark.parametrize("R, S, P, A", [
    (8, 4, 2, 1),  # S a multiple of P
    (12, 4, 3, 2),  # streams 1 and 2 each shared by two processes
    (8, 2, 4, 2),  # more processes than streams
    (6, 3, 1, 3),
    (16, 8, 8, 1),  # nanochat's 8 ranks
])
def test_every_process_gets_its_micro_batches_of_the_canonical_step(R, S, P, A):
    n = 30  # past every stream's end: the streams cycle
    want = canonical_steps(R, S, n)
    for p in range(P):
        got = steps_of(StreamBatches(mid_batches(R, S, P, p), A), A, n)
        lo, hi = p * R // P, (p + 1) * R // P
        for (x, y), (wx, wy) in zip(got, want):
            np.testing.assert_array_equal(x, wx[lo:hi].reshape(A, R // (P * A), T))
            np.testing.assert_array_equal(y, wy[lo:hi].reshape(A, R // (P * A), T))


def nanochat_mid(rank: int, world: int, rows: int, n: int) -> list[np.ndarray]:
    """nanochat 8c89661's mid_data_generator on one rank: ``n`` batches of ``rows*T+1`` buffered tokens."""
    buffer, cursor, out = [], rank, []
    for _ in range(n):
        while len(buffer) < rows * T + 1:
            buffer += TOKENS[cursor]
            cursor += world
            if cursor >= len(CONVS):
                cursor -= len(CONVS)
        window, buffer = buffer[: rows * T + 1], buffer[rows * T + 1 :]
        out.append(np.asarray(window[:-1]).reshape(rows, T))
    return out


def test_as_many_streams_as_nanochat_ranks_give_each_rank_its_rows():
    rows, world, n = 2, 8, 30  # past the end: nanochat wraps each rank's cursor once
    for rank in range(world):
        source = mid_batches(rows * world, world, world, rank)
        got = [next(source)[0] for _ in range(n)]
        for x, want in zip(got, nanochat_mid(rank, world, rows, n)):
            np.testing.assert_array_equal(x, want)


@pytest.mark.parametrize("saved_by, resumed_by, A", [(1, 2, 1), (2, 1, 2), (3, 4, 1), (4, 3, 1)])
def test_a_merged_state_resumes_on_another_layout(saved_by, resumed_by, A):
    R, S, n = 12, 4, 4
    whole = canonical_steps(R, S, n + 5)
    states = []
    for p in range(saved_by):
        source = StreamBatches(mid_batches(R, S, saved_by, p), A)
        steps_of(source, A, n)
        states.append(json.loads(json.dumps(source.get_state())))  # through JSON, as a checkpoint's meta
    merged = merge_states(states)
    assert sorted(merged["stream_states"], key=int) == ["0", "1", "2", "3"] and merged["batches"] == n
    assert any(s["offset"] > 0 for s in merged["stream_states"].values())  # resumes inside a conversation
    for p in range(resumed_by):
        got = steps_of(StreamBatches(mid_batches(R, S, resumed_by, p, state=merged), A), A, 5)
        lo, hi = p * R // resumed_by, (p + 1) * R // resumed_by
        for (x, y), (wx, wy) in zip(got, whole[n:]):
            np.testing.assert_array_equal(x, wx[lo:hi].reshape(A, -1, T))
            np.testing.assert_array_equal(y, wy[lo:hi].reshape(A, -1, T))


def test_states_of_another_run_are_refused():
    first = mid_batches(8, 4, 2, 0)
    next(first)
    state = first.get_state()
    with pytest.raises(ValueError, match=r"no position for data stream\(s\) \[2, 3\]"):
        mid_batches(8, 4, 2, 1, state=state)
    with pytest.raises(ValueError, match="cover 2 of 4 data streams"):
        merge_states([state])
    whole = mid_batches(8, 4, 1, 0)
    next(whole)
    state = whole.get_state()
    with pytest.raises(ValueError, match="'streams' is 4 in the state but 2 here"):
        mid_batches(8, 2, 1, 0, state=state)
    with pytest.raises(ValueError, match="'conversations' is 23 in the state but 22 here"):
        mid_batches(8, 4, 1, 0, state=state, convs=CONVS[:-1])
    with pytest.raises(ValueError, match="'version' is None in the state"):  # the process-strided stream's state
        mid_batches(8, 4, 1, 0, state={"cursor": 3, "offset": 0, "exhausted": False})
    bad = {**state, "stream_states": {**state["stream_states"], "1": {"cursor": 2, "offset": 0}}}
    with pytest.raises(ValueError, match="data stream 1 at conversation 2"):
        mid_batches(8, 4, 1, 0, state=bad)


def test_small_or_empty_mixtures_are_errors():
    with pytest.raises(ValueError, match="empty"):
        mid_batches(8, 4, 1, 0, convs=[])
    with pytest.raises(ValueError, match="3 conversations, fewer than its 4 data streams"):
        mid_batches(8, 4, 1, 0, convs=CONVS[:3])


def end_and_progress(R: int, S: int, n: int) -> list[tuple[bool, float]]:
    """After each of steps 0..n-1: (some stream rendered its last conversation of the epoch, max of the streams'
    next conversation / N). A stream renders conversations until its tokens cover what the steps took."""
    N, m = len(CONVS), R // S
    out = []
    for s in range(n):
        taken, ended, progress = (s + 1) * (m * T + 1), False, 0.0
        for k in range(S):
            j, have = 0, 0
            while have < taken:  # render the stream's j-th conversation
                have += len(TOKENS[(k + j * S) % N])
                j += 1
            ended |= k + j * S >= N  # its next conversation is past the end
            progress = max(progress, (k + j * S) % N / N)
        out.append((ended, progress))
    return out


def test_end_and_progress_are_the_same_on_one_and_two_processes():
    R, S, n = 8, 4, 45
    want = end_and_progress(R, S, n)
    assert [e for e, _ in want].index(True) > 3 and want[-1][0]  # the epoch ends within the run, not at once
    one, two = mid_batches(R, S, 1, 0), [mid_batches(R, S, 2, p) for p in range(2)]
    for ended, progress in want:
        next(one)
        for s in two:
            next(s)
        assert one.exhausted == any(s.exhausted for s in two) == ended  # the trainer agrees them by a max
        assert one.progress == max(s.progress for s in two) == progress
