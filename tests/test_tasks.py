"""Tests for nanochat_jax.tasks: slicing, mixtures, shuffles, loading, and bad input.

Expected values are written from nanochat's rules (Random(42) for mixtures,
datasets' default_rng(42) permutation recorded from `datasets` 5.2.0), never
read back from the code under test. Real rows come from the shipped slices,
read here with gzip + json, not through the task classes.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanochat_jax.tasks import (
    EMBEDDED_DIR, GSM8K, MMLU, CustomJSON, HumanEval, SimpleSpelling, SmolTalk, SpellingBee, Task, TaskDataError,
    TaskMixture, TaskSequence, embedded_path,
)

# Dataset.from_dict({"i": range(n)}).shuffle(seed=42)["i"] under datasets 5.2.0.
RECORDED_PERMUTATIONS = {
    10: [5, 6, 0, 7, 3, 2, 4, 9, 1, 8],
    164: [52, 134, 51, 66, 147, 101, 24, 125, 145, 50, 38, 142],
    1319: [30, 754, 429, 1010, 1284, 953, 751, 954, 705, 993, 1029, 917],
}


def raw(name: str) -> list[dict]:
    with gzip.open(EMBEDDED_DIR / name, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


MMLU_ROWS = raw("mmlu/all/test.shuffled.jsonl.gz")[:10]


class Numbers(Task):
    """n conversations whose user message is its own name and index."""

    eval_type = "generative"

    def __init__(self, name: str, n: int, **kwargs):
        super().__init__(**kwargs)
        self.name, self.n = name, n

    def num_examples(self):
        return self.n

    def get_example(self, index):
        return {"messages": [{"role": "user", "content": f"{self.name}{index}"}]}


def ids(task) -> list[str]:
    return [task[i]["messages"][0]["content"] for i in range(len(task))]


# ---------------------------------------------------------------- the interface


def test_slicing_start_stop_step():
    assert ids(Numbers("a", 10, start=2, stop=9, step=3)) == ["a2", "a5", "a8"]
    assert len(Numbers("a", 10, start=3, step=4)) == 2  # ceil(7 / 4)
    assert ids(Numbers("a", 5, stop=100)) == ["a0", "a1", "a2", "a3", "a4"]  # a stop past the end is capped
    assert len(Numbers("a", 5, start=4, stop=4)) == 0
    with pytest.raises(IndexError):
        Numbers("a", 5, stop=3)[3]
    with pytest.raises(TypeError):
        Numbers("a", 5)[1.0]
    for bad in ({"start": -1}, {"start": 3, "stop": 2}, {"step": 0}):
        with pytest.raises(ValueError):
            Numbers("a", 5, **bad)


def test_mixture_is_nanochats_random42_shuffle_and_oversamples():
    a, b = Numbers("a", 3), Numbers("b", 2)
    mix = TaskMixture([a, b, a])  # a twice = two epochs of a
    pairs = [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("a", 0), ("a", 1), ("a", 2)]
    random.Random(42).shuffle(pairs)
    assert ids(mix) == [f"{n}{i}" for n, i in pairs]
    assert ids(mix) == ids(TaskMixture([a, b, a]))  # deterministic across constructions
    assert sorted(ids(mix)) == ["a0", "a0", "a1", "a1", "a2", "a2", "b0", "b1"]
    assert ids(TaskMixture([a, b], start=1, stop=4)) == ids(TaskMixture([a, b]))[1:4]


def test_sequence_is_in_order():
    assert ids(TaskSequence([Numbers("a", 2), Numbers("b", 3)])) == ["a0", "a1", "b0", "b1", "b2"]
    for cls in (TaskMixture, TaskSequence):
        with pytest.raises(ValueError):
            cls([])


def test_default_rng_permutation_is_the_datasets_shuffle():
    for n, recorded in RECORDED_PERMUTATIONS.items():
        assert np.random.default_rng(42).permutation(n)[: len(recorded)].tolist() == recorded
    try:
        import datasets
    except ImportError:
        return
    for n in RECORDED_PERMUTATIONS:
        assert datasets.Dataset.from_dict({"i": list(range(n))}).shuffle(seed=42)["i"] == np.random.default_rng(42).permutation(n).tolist()


# ---------------------------------------------------------------- loading


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_path_loads_hf_schema_in_nanochats_order(tmp_path, fmt):
    path = (write_jsonl if fmt == "jsonl" else write_parquet)(tmp_path / f"test.{fmt}", MMLU_ROWS)
    task = MMLU(subset="all", split="test", path=path)
    assert len(task) == 10 and not task.embedded
    order = [MMLU_ROWS[i]["question"] for i in RECORDED_PERMUTATIONS[10]]  # the 10-row file is shuffled like datasets does
    assert [task[i]["messages"][0]["content"].split("\n")[0] for i in range(10)] == [f"Multiple Choice question: {q}" for q in order]


def test_preshuffled_files_keep_their_order(tmp_path):
    path = write_jsonl(tmp_path / "test.shuffled.jsonl", MMLU_ROWS)
    task = MMLU(subset="all", split="test", path=path)
    assert [task[i]["subject"] for i in range(10)] == [r["subject"] for r in MMLU_ROWS]


def test_auxiliary_train_rows_are_unwrapped(tmp_path):
    path = write_parquet(tmp_path / "train.parquet", [{"train": r} for r in MMLU_ROWS[:3]])
    task = MMLU(subset="auxiliary_train", split="train", path=path)
    assert sorted(task[i]["subject"] for i in range(3)) == sorted(r["subject"] for r in MMLU_ROWS[:3])


def test_task_dir_layout_and_env(tmp_path, monkeypatch):
    (tmp_path / "gsm8k" / "main").mkdir(parents=True)
    rows = raw("gsm8k/main/test.shuffled.jsonl.gz")[:4]
    write_parquet(tmp_path / "gsm8k" / "main" / "test.parquet", rows)
    monkeypatch.setenv("NANOCHAT_JAX_TASK_DIR", str(tmp_path))
    task = GSM8K(subset="main", split="test")
    assert sorted(task[i]["messages"][0]["content"] for i in range(4)) == sorted(r["question"] for r in rows)
    with pytest.raises(TaskDataError, match=r"gsm8k main/train: expected exactly one of train.jsonl, train.jsonl.gz, train.parquet"):
        GSM8K(subset="main", split="train")
    assert len(GSM8K(subset="main", split="test", data_dir="embedded")) == 500  # data_dir wins over the env
    assert len(GSM8K(subset="synthetic", split="test", data_dir="")) == 500  # "" = unset; synthetic is always embedded


def test_download_failure_names_dataset_split_and_path(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.delenv("NANOCHAT_JAX_TASK_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no real network in tests
    monkeypatch.setenv("NANOCHAT_JAX_BASE_DIR", str(tmp_path))
    with pytest.raises(TaskDataError) as info:
        MMLU(subset="all", split="test")
    message = str(info.value)
    assert "could not download dataset cais/mmlu (subset 'all', split 'test')" in message
    assert 'MMLU(..., path="test.jsonl")' in message and "NANOCHAT_JAX_TASK_DIR" in message


def test_hub_cache_shards_are_read_in_order(tmp_path, monkeypatch):
    """A split already in the hub cache loads with the hub unreachable: shards concatenated, then shuffled."""
    pytest.importorskip("huggingface_hub")
    repo = tmp_path / "task_data" / "datasets--openai--gsm8k"
    commit = "0" * 40
    (repo / "refs" / "refs" / "convert").mkdir(parents=True)
    (repo / "refs" / "refs" / "convert" / "parquet").write_text(commit)
    shards = repo / "snapshots" / commit / "main" / "test"
    shards.mkdir(parents=True)
    rows = raw("gsm8k/main/test.shuffled.jsonl.gz")[:10]
    write_parquet(shards / "0000.parquet", rows[:6])
    write_parquet(shards / "0001.parquet", rows[6:])
    for name, value in (("NANOCHAT_JAX_BASE_DIR", str(tmp_path)), ("HF_ENDPOINT", "http://127.0.0.1:9")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("NANOCHAT_JAX_TASK_DIR", raising=False)
    task = GSM8K(subset="main", split="test")
    assert [task[i]["messages"][0]["content"] for i in range(10)] == [rows[i]["question"] for i in RECORDED_PERMUTATIONS[10]]
    write_parquet(shards / "0001.parquet", rows[6:8] + [{"question": "?", "answer": "no final answer"}])
    with pytest.raises(TaskDataError, match=re.escape(f"{shards / '0001.parquet'} row 3: malformed gsm8k")):
        GSM8K(subset="main", split="test")


# ---------------------------------------------------------------- bad input


def test_malformed_rows_name_file_and_line(tmp_path):
    good = MMLU_ROWS[0]
    bad_json = tmp_path / "a.jsonl"
    bad_json.write_text(json.dumps(good) + "\n\n{not json\n", encoding="utf-8")
    with pytest.raises(TaskDataError, match=re.escape(f"{bad_json}:3: not valid JSON")):
        MMLU(subset="all", split="test", path=bad_json)
    missing = write_jsonl(tmp_path / "b.jsonl", [good, {k: v for k, v in good.items() if k != "answer"}])
    with pytest.raises(TaskDataError, match=re.escape(f"{missing}:2: malformed mmlu all/test row: fields ['answer']")):
        MMLU(subset="all", split="test", path=missing)
    three = write_parquet(tmp_path / "c.parquet", [good, dict(good, choices=good["choices"][:3])])
    with pytest.raises(TaskDataError, match=re.escape(f"{three} row 2: malformed mmlu all/test row: an MMLU row has 4 choices")):
        MMLU(subset="all", split="test", path=three)
    no_answer = write_jsonl(tmp_path / "d.jsonl", [{"question": "1+1?", "answer": "It is 2."}])
    with pytest.raises(TaskDataError, match=re.escape(f"{no_answer}:1: malformed gsm8k main/test row: a GSM8K answer ends with '#### N'")):
        GSM8K(subset="main", split="test", path=no_answer)
    roles = write_jsonl(tmp_path / "e.jsonl", [{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "hi"}]}])
    with pytest.raises(TaskDataError, match=re.escape(f"{roles}:1: malformed smoltalk default/test row: message 1 must be assistant")):
        SmolTalk(split="test", path=roles)
    garbage = tmp_path / "f.parquet"
    garbage.write_bytes(b"not parquet")
    with pytest.raises(TaskDataError, match="not a readable parquet file"):
        HumanEval(path=garbage)


def test_never_silently_empty(tmp_path):
    empty = tmp_path / "test.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(TaskDataError, match="no rows for mmlu all/test"):
        MMLU(subset="all", split="test", path=empty)
    with pytest.raises(TaskDataError, match="no conversations"):
        CustomJSON(empty)
    with pytest.raises(TaskDataError, match="no such file"):
        MMLU(subset="all", split="test", path=tmp_path / "missing.jsonl")
    with pytest.raises(TaskDataError, match="embedded identity conversations"):
        CustomJSON(tmp_path / "identity_conversations.jsonl")


def test_customjson_validates_each_line(tmp_path):
    path = write_jsonl(tmp_path / "id.jsonl", [
        [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "A test."}],
        [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "?"}],
    ])
    with pytest.raises(TaskDataError, match=re.escape(f"{path}:2: message 0 must be")):
        CustomJSON(path)
    ok = CustomJSON(write_jsonl(tmp_path / "ok.jsonl", [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]]))
    assert ok[0] == {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}


def test_spelling_word_list_path(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("banana\n\n", encoding="utf-8")
    assert SimpleSpelling(size=3, path=words)[2] == {"messages": [
        {"role": "user", "content": "Spell the word: banana"}, {"role": "assistant", "content": "banana:b,a,n,a,n,a"}]}
    assert SpellingBee(size=3, path=words)[0]["messages"][1]["content"][2]["text"].startswith("'banana'.count(")
    words.write_text("\n", encoding="utf-8")
    with pytest.raises(TaskDataError, match="word list is empty"):
        SpellingBee(path=words)


def test_bad_subset_or_split():
    with pytest.raises(ValueError, match="auxiliary_train has only the train split"):
        MMLU(subset="auxiliary_train", split="test")
    with pytest.raises(ValueError, match="GSM8K split must be train|test"):
        GSM8K(subset="main", split="validation")
    with pytest.raises(TaskDataError, match="no embedded chat data"):
        embedded_path("nope.jsonl")
