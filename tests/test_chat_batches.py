"""SFT's collation against an independent implementation of nanochat's rules (chat_sft); mid's: test_mid_streams."""

import functools

import numpy as np
import pytest

from nanochat_jax.chat_batches import PaddedConversations, length_buckets
from nanochat_jax.tokenizer import Tokenizer

TEXT = ["the quick brown fox jumps over the lazy dog " * 3, "12 + 30 = 42 and 7 * 6 = 42, numbers again ", "hello world! "]


@functools.lru_cache(maxsize=None)
def tok() -> Tokenizer:
    return Tokenizer.train_from_iterator(iter(TEXT * 50), 300)


def conversations(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        words = " ".join(rng.choice(["fox", "dog", "12", "42", "hello", "world"], size=int(rng.integers(1, 30))))
        assistant = [{"type": "text", "text": f"answer {i}: "}, {"type": "python", "text": "12+30"},
                     {"type": "python_output", "text": "42"}, {"type": "text", "text": words}]  # fmt: skip
        out.append({"messages": [{"role": "user", "content": f"question {words}"}, {"role": "assistant", "content": assistant}]})
    return out


def spec_tokens(conv) -> tuple[list[int], list[bool]]:
    """The token sequence nanochat renders, with 'trained' flags, built directly from the special-token spec."""
    t, sp = tok(), tok().encode_special
    user, parts = conv["messages"][0]["content"], conv["messages"][1]["content"]
    ids = [t.get_bos_token_id(), sp("<|user_start|>"), *t.encode(user), sp("<|user_end|>"), sp("<|assistant_start|>")]
    trained = [False] * len(ids)
    for part in parts:
        body = t.encode(part["text"])
        if part["type"] == "text":
            seq, flag = body, True
        elif part["type"] == "python":
            seq, flag = [sp("<|python_start|>"), *body, sp("<|python_end|>")], True
        else:  # tool output comes from the environment: never trained
            seq, flag = [sp("<|output_start|>"), *body, sp("<|output_end|>")], False
        ids += seq
        trained += [flag] * len(seq)
    return ids + [sp("<|assistant_end|>")], trained + [True]


def test_sft_rows_train_only_what_the_assistant_writes_and_pad_to_a_bucket():
    convs = conversations(7)
    source = PaddedConversations(convs, tok(), rows=3, max_len=256)
    batch = source.next()
    pad = tok().encode_special("<|assistant_end|>")
    want_width = min(b for b in (64, 128, 256) if b >= max(len(spec_tokens(c)[0]) - 1 for c in convs[:3]))
    assert batch["inputs"].shape == batch["targets"].shape == (3, want_width)
    for row, conv in enumerate(convs[:3]):
        ids, trained = spec_tokens(conv)
        n = len(ids) - 1
        assert batch["inputs"][row, :n].tolist() == ids[:-1]
        assert (batch["inputs"][row, n:] == pad).all() and (batch["targets"][row, n:] == -1).all()
        for j in range(n):  # target j is token j+1, kept only where that token is trained
            assert batch["targets"][row, j] == (ids[j + 1] if trained[j + 1] else -1)
    # Resume: the state after one micro-batch regenerates the next one exactly.
    state = source.get_state()
    again = PaddedConversations(convs, tok(), rows=3, max_len=256, state=state).next()
    nxt = source.next()
    assert all(np.array_equal(nxt[k], again[k]) for k in nxt)
    # Cycling: 7 conversations in rows of 3 wrap into the next epoch without dropping rows.
    third = source.next()
    assert third["inputs"][2, : len(spec_tokens(convs[1])[0]) - 1].tolist() == spec_tokens(convs[1])[0][:-1]


def test_length_buckets_are_bounded():
    assert length_buckets(2048) == (64, 128, 256, 512, 1024, 2048)
    assert length_buckets(100) == (64, 100)


def test_an_empty_mixture_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        PaddedConversations([], tok(), rows=2, max_len=64)


@pytest.mark.parametrize("world, rows", [(2, 2), (4, 1)])
def test_sft_micro_batches_are_the_same_conversations_on_any_topology(monkeypatch, world, rows):
    """Micro-batch m is conversations 4m..4m+3 (wrapping) whether 1 process reads 4 rows or ``world`` read ``rows`` each,
    and a state saved on one layout resumes on the other (the count is global)."""
    import nanochat_jax.chat_batches as cb

    convs = conversations(7)
    want = [[(4 * m + j) % 7 for j in range(4)] for m in range(5)]  # conversation indices, by hand
    first_row = {i: spec_tokens(c)[0][:-1] for i, c in enumerate(convs)}

    def rows_of(batch):
        return [next(i for i, ids in first_row.items() if batch["inputs"][r, : len(ids)].tolist() == ids) for r in range(len(batch["inputs"]))]

    def layout(world_, rows_, state=None):
        sources = []
        for rank in range(world_):
            monkeypatch.setattr(cb, "_process_grid", lambda rank=rank: (rank, world_))
            sources.append(PaddedConversations(convs, tok(), rows=rows_, max_len=256, state=state))
        return sources

    single, multi = layout(1, 4)[0], layout(world, rows)
    for m in range(3):
        assert rows_of(single.next()) == want[m]
        assert [i for s in multi for i in rows_of(s.next())] == want[m]
    assert single.get_state() == multi[0].get_state() == {"consumed": 12}
    resumed_multi, resumed_single = layout(world, rows, single.get_state()), layout(1, 4, multi[0].get_state())[0]
    assert [i for s in resumed_multi for i in rows_of(s.next())] == want[3] == rows_of(resumed_single.next())
