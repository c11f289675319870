"""Each task on real rows of the shipped slices: the conversation equals what nanochat's rules give.

The expected conversations are written out by hand from the rules in
nanochat's tasks (render_mc, the GSM8K <<expr=result>> split, the SpellingBee
solution template), for specific rows named by their text. Which row comes
first is checked against datasets' recorded permutation, not the code.
"""

from __future__ import annotations

import functools
import gzip
import json
import random
import re

import pytest

from nanochat_jax.calculator import evaluate as calculate
from nanochat_jax.tasks import (
    ARC, EMBEDDED_DIR, GSM8K, IDENTITY_FILE, MMLU, CustomJSON, HumanEval, SimpleSpelling, SpellingBee, embedded_path,
)
from nanochat_jax.tasks.humaneval import extract_program
from nanochat_jax.tokenizer import Tokenizer

MC_TAIL = "\n\nRespond only with the letter of the correct answer."


def raw(name: str) -> list:
    with gzip.open(EMBEDDED_DIR / name, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def find(task, text: str) -> dict:
    """The conversation whose first user message contains ``text``."""
    (hit,) = [task[i] for i in range(len(task)) if text in task[i]["messages"][0]["content"]]
    return hit


def text(t):
    return {"type": "text", "text": t}


def py(t):
    return {"type": "python", "text": t}


def out(t):
    return {"type": "python_output", "text": t}


def chat(question, answer, **extra) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], **extra}


@functools.lru_cache(maxsize=None)
def gsm8k_test() -> GSM8K:
    return GSM8K(subset="main", split="test", data_dir="embedded")


def test_mmlu_rows_and_scoring():
    task = MMLU(subset="all", split="test", data_dir="embedded")
    assert len(task) == 1024 and task.embedded and task.eval_type == "categorical"
    assert task[0] == chat(
        "Multiple Choice question: Positronium is an atom formed by an electron and a positron (antielectron). It is similar to "
        "the hydrogen atom, with the positron replacing the proton. If a positronium atom makes a transition from the state "
        "with n=3 to a state with n=1, the energy of the photon emitted in this transition is closest to\n"
        "- 6.0 e=A\n- 6.8 eV=B\n- 12.2 eV=C\n- 13.6 eV=D" + MC_TAIL,
        "A", subject="college_physics", letters=("A", "B", "C", "D"))
    assert task[1] == chat(
        "Multiple Choice question: The regional lymphatic drainage of the left side of the tip of the tongue is to the\n"
        "- left submental lymph node.=A\n- left and right submental lymph nodes.=B\n- left submandibular lymph node.=C\n"
        "- left and right submandibular lymph nodes.=D" + MC_TAIL,
        "B", subject="anatomy", letters=("A", "B", "C", "D"))
    assert task.evaluate(task[1], "B") and not task.evaluate(task[1], "A")
    assert task.reward(task[1], "B") == 1.0 and task.reward(task[1], "C") == 0.0
    with pytest.raises(ValueError, match="one of"):
        task.evaluate(task[1], " B")  # " B" is a different token from "B": categorical eval never produces it


def test_arc_rows_letters_and_scoring():
    easy = ARC(subset="ARC-Easy", split="validation", data_dir="embedded")
    assert len(easy) == 570
    # datasets' load_from_disk(ARC-Easy/validation).shuffle(seed=42)[0] is this row (checked with datasets 5.2.0)
    assert easy[0] == chat(
        "Multiple Choice question: Modern factories and industrial plants have filters that remove much of the sulfur from "
        "their emissions before it reaches the atmosphere. This design feature helps most in reducing the contribution of "
        "factories to which environmental problem?\n- acid rain=A\n- habitat loss=B\n- coastline erosion=C\n- algal growth in lakes=D" + MC_TAIL,
        "A", letters=["A", "B", "C", "D"])
    numbered = find(easy, "A green plant absorbs light.")
    assert numbered == chat(
        "Multiple Choice question: A green plant absorbs light. A frog eats flies. These are both examples of how organisms\n"
        "- obtain energy=1\n- escape predators=2\n- produce offspring=3\n- excrete waste=4" + MC_TAIL,
        "1", letters=["1", "2", "3", "4"])
    assert easy.evaluate(numbered, "1") and not easy.evaluate(numbered, "2")
    challenge = ARC(subset="ARC-Challenge", split="validation", data_dir="embedded")
    assert len(challenge) == 299
    three = find(challenge, "Which state of matter has no definite volume")
    assert three == chat("Multiple Choice question: Which state of matter has no definite volume and no definite shape?\n"
                         "- gas=A\n- liquid=B\n- solid=C" + MC_TAIL, "A", letters=["A", "B", "C"])
    with pytest.raises(ValueError):
        challenge.evaluate(three, "D")


def test_gsm8k_calculator_parts():
    task = gsm8k_test()
    assert len(task) == 500 and task.eval_type == "generative"
    assert task[0] == chat(
        "Darrell and Allen's ages are in the ratio of 7:11. If their total age now is 162, calculate Allen's age 10 years from now.", [
            text("The total ratio representing their ages is 7+11= "), py("7+11"), out("18"),
            text("18\nSince the fraction of the ratio that represents Allen's age is 11/18, Allen's current age is 11/18*162 = "),
            py("11/18*162"), out("99"),
            text("99\nIf Allen is currently 99 years old, in 10 years he will be 99+10 = "), py("99+10"), out("109"),
            text("109 years old\n#### 109")])
    south = find(task, "Southlandia")
    assert south["messages"][1]["content"] == [
        text("-48 + 21 + (-3) = "), py("-48+21+(-3)"), out("-30"),  # split on the *last* '='
        text("-30\n-30/3 = "), py("-30/3"), out("-10"),
        text("-10 degrees\nThe average highest temperature recorded in Southlandia, Northlandia, and Midlandia is -10 degrees Fahrenheit.\n#### -10")]


@pytest.mark.parametrize("question, right, wrong", [
    ("Southlandia", ["#### -10", "so it is -10.\n#### -10 degrees"], ["#### 10", "#### -10.0", "-10", "#### - 10"]),
    ("Mark buys a fleet of 12 cars", ["#### 276000", "#### 276,000", "The total is $276,000.\n\n#### 276,000"], ["#### 276,001", "#### 27600", "276000"]),
    ("The temperature was 2 degrees Celsius", ["#### -3"], ["#### 3", "#### -3.5"]),
])
def test_gsm8k_scoring_commas_and_negatives(question, right, wrong):
    task = gsm8k_test()
    conversation = find(task, question)
    for completion in right:
        assert task.evaluate(conversation, completion) and task.reward(conversation, completion) == 1.0, completion
    for completion in wrong:
        assert not task.evaluate(conversation, completion) and task.reward(conversation, completion) == 0.0, completion


def test_synthetic_arithmetic_matches_the_calculator():
    train, test = GSM8K(subset="synthetic", split="train"), GSM8K(subset="synthetic", split="test")
    assert (len(train), len(test)) == (4000, 500) and train.embedded
    questions = {split: {t[i]["messages"][0]["content"] for i in range(len(t))} for split, t in (("train", train), ("test", test))}
    assert not questions["train"] & questions["test"]
    for task in (train, test):
        for i in range(len(task)):
            parts = task[i]["messages"][1]["content"]
            calls = [(a["text"], b["text"]) for a, b in zip(parts, parts[1:]) if a["type"] == "python"]
            assert calls and all(str(calculate(expr)) == result for expr, result in calls), parts
            assert parts[-1]["text"].endswith(f"#### {calls[-1][1]}")
            assert task.evaluate(task[i], f"#### {calls[-1][1]}")


def test_humaneval_rows_and_execution():
    task = HumanEval(data_dir="embedded")
    rows = raw("humaneval/openai_humaneval/test.jsonl.gz")
    assert len(task) == 164 and [r["task_id"] for r in rows] == [f"HumanEval/{i}" for i in range(164)]
    row = rows[52]  # datasets' permutation of 164 starts at 52
    assert row["entry_point"] == "below_threshold"
    assert task[0] == chat(row["prompt"], f"{row['prompt']}\n{row['canonical_solution']}", entry_point="below_threshold", test=row["test"])
    solution = "def below_threshold(l, t):\n    return all(x < t for x in l)\n"
    assert task.evaluate(task[0], task[0]["messages"][1]["content"])
    assert task.evaluate(task[0], f"Sure!\n```python\n{solution}```\nThat's it.")
    assert not task.evaluate(task[0], solution.replace("x < t", "x <= t"))
    assert not task.evaluate(task[0], "I don't know.")
    assert extract_program("a\n```\nx = 1\n```\nb\n```python\ny = 2\n```") == "x = 1"


def test_spellingbee_rows_and_scoring():
    words = [w.strip() for w in gzip.open(EMBEDDED_DIR / "words.txt.gz", "rt") if w.strip()]
    assert random.Random(10_000_000).choice(words) == "waitresses"  # test example 0 draws from seed 10,000,000
    task = SpellingBee(size=256, split="test")
    assert len(task) == 256 and task.eval_type == "generative"
    expected_manual = (
        "We are asked to find the number 't' in the word 'waitresses'. Let me try a manual approach first.\n\n"
        "First spell the word out:\nwaitresses:w,a,i,t,r,e,s,s,e,s\n\nThen count the occurrences of 't':\n"
        "1:w\n2:a\n3:i\n4:t hit! count=1\n5:r\n6:e\n7:s\n8:s\n9:e\n10:s\n\nThis gives us 1.")
    assert task[0] == chat("in 'waitresses', count the \"t\"?", [  # "In {word}, count the {letter}", lower-cased, quoted, with '?'
        text(expected_manual), text("\n\nLet me double check this using Python:\n\n"), py("'waitresses'.count('t')"), out("1"),
        text("\n\nPython gives us 1.\n\nMy final answer is:\n\n#### 1")])
    assert task.evaluate(task[0], "#### 1") and not task.evaluate(task[0], "#### 2") and task.reward(task[0], "1") == 0.0
    train = SpellingBee(size=50, split="train")
    for i in range(50):
        conversation = train[i]
        expr, result = conversation["messages"][1]["content"][2]["text"], conversation["messages"][1]["content"][3]["text"]
        value = calculate(expr)
        # nanochat's deny list refuses words such as 'direr' ('dir') or 'profile' ('file'): the engine gets no output then.
        deny = ("__", "import", "exec", "eval", "compile", "open", "file", "input", "globals", "locals", "vars", "dir", "getattr", "setattr", "delattr", "hasattr")
        assert (str(value) == result) if value is not None else any(w in expr.lower() for w in deny), expr
        assert train.evaluate(conversation, f"#### {result}")


def test_simplespelling_rows():
    words = [w.strip() for w in gzip.open(EMBEDDED_DIR / "words.txt.gz", "rt") if w.strip()]
    random.Random(42).shuffle(words)
    assert random.Random(0).choice(words) == "rupture"
    assert SimpleSpelling(size=10)[0] == chat("Spell the word: rupture", "rupture:r,u,p,t,u,r,e")
    assert SimpleSpelling(size=10, split="test")[3] != SimpleSpelling(size=10)[3]


def test_identity_conversations():
    task = CustomJSON(embedded_path(IDENTITY_FILE))
    conversations = [task[i]["messages"] for i in range(len(task))]
    assert len(conversations) >= 300 and len({json.dumps(c) for c in conversations}) == len(conversations)
    assert sum("nanochat_jax" in json.dumps(c) for c in conversations) > len(conversations) // 2  # most say who they are
    assert len({c[0]["content"] for c in conversations}) > 50  # varied openings


def test_provenance_counts_match_files():
    table = (EMBEDDED_DIR / "PROVENANCE.md").read_text(encoding="utf-8")
    listed = {name: int(n.replace(",", "")) for name, n in re.findall(r"^\| `([^`]+)` \| ([\d,]+) \|", table, re.M)}
    assert len(listed) == 9
    for name, n in listed.items():
        lines = gzip.open(EMBEDDED_DIR / name, "rt", encoding="utf-8").read().splitlines()
        assert len(lines) == n, name
    assert sum(p.stat().st_size for p in EMBEDDED_DIR.rglob("*") if p.is_file()) < 3_000_000


def test_every_task_renders_through_the_tokenizer():
    tok = Tokenizer.train_from_iterator(iter(json.dumps(c) for c in raw(IDENTITY_FILE)), 300)
    start, output = tok.encode_special("<|python_start|>"), tok.encode_special("<|output_start|>")
    tasks = [MMLU(subset="all", split="test", data_dir="embedded"), ARC(subset="ARC-Easy", split="validation", data_dir="embedded"),
             gsm8k_test(), HumanEval(data_dir="embedded"), SpellingBee(size=2), SimpleSpelling(size=2), CustomJSON(embedded_path(IDENTITY_FILE))]
    for task in tasks:
        ids, mask = tok.render_conversation(task[0], max_tokens=100_000)
        assert ids[0] == tok.get_bos_token_id() and 0 < sum(mask) < len(ids)
    ids, mask = tok.render_conversation(gsm8k_test()[0], max_tokens=100_000)
    assert [mask[i] for i, t in enumerate(ids) if t == start] == [1, 1, 1]  # the model writes its calculator calls
    assert [mask[i] for i, t in enumerate(ids) if t == output] == [0, 0, 0]  # the tool's outputs are not trained on
