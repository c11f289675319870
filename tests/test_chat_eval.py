"""Chat evaluation against direct computations on real shipped rows, pass@k and ChatCORE by hand, and the CLI.

Categorical: every prediction equals the argmax over the letters of an
unbatched full forward of that prompt alone. Generative: the completions of
problems decoded together equal a naive per-problem greedy decode (full forward
every step, calculator reply forced), and seeded sampling repeats whatever the
batching. Models are tiny random GPTs (1 layer, 64 wide).
"""

import itertools
import json

import numpy as np
import pytest

from decode_reference import last_logits, naive_chat_greedy, scripted_gpt
from model_helpers import random_gpt
from nanochat_jax import cli, sharding
from nanochat_jax.chat_eval import chatcore, evaluate_task, generative_outcomes, pass_at_k
from nanochat_jax.gpt import GPTConfig
from nanochat_jax.results import load_results, report_dir
from nanochat_jax.tasks import ARC, GSM8K, MMLU
from nanochat_jax.tokenizer import Tokenizer

VOCAB = 400


def tiny_config():
    return GPTConfig(sequence_len=1024, vocab_size=VOCAB, n_layer=1, n_head=1, n_kv_head=1, n_embd=64)


@pytest.fixture(scope="module")
def tok():
    tasks = [MMLU("all", "test", data_dir="embedded", stop=40), ARC("ARC-Easy", "validation", data_dir="embedded", stop=40),
             GSM8K("main", "test", data_dir="embedded", stop=40)]  # fmt: skip
    texts = [json.dumps(t[i]["messages"]) for t in tasks for i in range(len(t))]
    return Tokenizer.train_from_iterator(iter(texts * 3), VOCAB)


class Recording:
    """A task seen through evaluate(): records each (question, answer); ``rule`` replaces the generative scoring."""

    def __init__(self, task, rule=None):
        self.task, self.rule, self.seen = task, rule, []
        self.eval_type = task.eval_type

    def __len__(self):
        return len(self.task)

    def __getitem__(self, i):
        return self.task[i]

    def evaluate(self, conversation, answer):
        self.seen.append((conversation["messages"][0]["content"], answer))
        return self.rule(answer) if self.rule else self.task.evaluate(conversation, answer)


@pytest.mark.parametrize("which,batch_size,mesh", [("MMLU", 8, True), ("ARC-Easy", 3, False)])
def test_categorical_predictions_are_the_letter_argmax_of_each_prompt_alone(tok, which, batch_size, mesh):
    if which == "MMLU":
        task = MMLU("all", "test", data_dir="embedded", stop=12)
    else:
        task = ARC("ARC-Easy", "validation", data_dir="embedded", stop=10)
    model = random_gpt(tiny_config(), seed=2)
    recording = Recording(task)
    acc = evaluate_task(recording, model, tok, batch_size=batch_size, mesh=sharding.make_mesh() if mesh else None)

    expected, correct = [], 0
    for i in range(len(task)):
        conversation = task[i]
        prompt = tok.render_for_completion(conversation)
        assert prompt[-1] == tok.encode_special("<|assistant_start|>") and len(prompt) <= 1024
        logits = last_logits(model, prompt)
        letters = conversation["letters"]
        expected.append(letters[int(np.argmax([logits[tok.encode(letter)[0]] for letter in letters]))])
        correct += expected[-1] == conversation["messages"][-1]["content"]
    assert [answer for _, answer in recording.seen] == expected
    assert acc == correct / len(task)
    assert 0 < correct < len(task)  # some right, some wrong: the comparison means something


@pytest.fixture(scope="module")
def tool_model(tok):
    """Random weights, except that <|assistant_start|> opens the calculator call "2+3"."""
    sp = tok.encode_special
    chain = [sp("<|assistant_start|>"), sp("<|python_start|>"), *tok.encode("2+3"), sp("<|python_end|>")]
    assert len(set(chain)) == len(chain)
    return scripted_gpt(tiny_config(), dict((a, [b]) for a, b in itertools.pairwise(chain)), seed=4, gain=10.0)


def even_length(completion):
    return len(completion) % 2 == 0


def test_generative_problems_decoded_together_match_each_decoded_alone(tok, tool_model):
    task = GSM8K("main", "test", data_dir="embedded", stop=5)
    recording = Recording(task, even_length)
    outcomes = generative_outcomes(recording, tool_model, tok, num_samples=1, max_new_tokens=16, temperature=0.0, top_k=50, batch_size=3)
    expected = []
    for i in range(len(task)):
        prompt = tok.render_for_completion(task[i])
        seq, mask = naive_chat_greedy(tool_model, tok, prompt, 16)
        completion = tok.decode(seq[len(prompt) :])
        assert completion.startswith("<|python_start|>2+3<|python_end|><|output_start|>5<|output_end|>")
        assert mask[len(prompt) + 5 : len(prompt) + 8] == [0, 0, 0]  # the forced calculator reply
        expected.append((task[i]["messages"][0]["content"], completion))
    assert sorted(recording.seen) == sorted(expected)
    assert outcomes.shape == (5, 1) and outcomes[:, 0].tolist() == [even_length(c) for _, c in expected]
    assert 0 < outcomes.sum() < 5


def rare(completion):
    return len(completion) % 5 == 0


def test_seeded_sampling_repeats_whatever_the_batching(tok, tool_model):
    task = GSM8K("main", "test", data_dir="embedded", stop=4)
    kw = {"num_samples": 3, "max_new_tokens": 12, "temperature": 1.0, "top_k": 50}
    runs = []
    for seed in (7, 8):
        recording = Recording(task, rare)
        runs.append((generative_outcomes(recording, tool_model, tok, batch_size=4, seed=seed, **kw), sorted(recording.seen)))
    (outcomes, seen), (_, seen_other_seed) = runs
    assert seen != seen_other_seed
    assert len(set(seen)) == 12  # every sample of every problem differs
    # Two problems per batch instead of four: the same samples, and the score is pass@3 of them.
    recording = Recording(task, rare)
    acc = evaluate_task(recording, tool_model, tok, batch_size=2, seed=7, **kw)
    assert sorted(recording.seen) == seen
    passed = {question: False for question, _ in seen}
    for question, completion in seen:
        passed[question] |= rare(completion)
    assert acc == np.mean(list(passed.values())) == outcomes.any(axis=1).mean()
    assert pass_at_k(outcomes, 1) < acc < 1  # more samples pass more problems, not all


def test_pass_at_k_and_chatcore_by_hand():
    outcomes = np.array([[0, 1, 0], [0, 0, 0], [1, 1, 1], [0, 0, 1]], bool)
    assert [pass_at_k(outcomes, k) for k in (1, 2, 3)] == [0.25, 0.5, 0.75]
    with pytest.raises(ValueError):
        pass_at_k(outcomes, 4)
    # (0.55 - 0.25) / 0.75 = 0.4, (0.25 - 0.25) / 0.75 = 0, (0.1 - 0) / 1 = 0.1
    assert chatcore({"ARC-Easy": 0.55, "MMLU": 0.25, "GSM8K": 0.1}) == pytest.approx(0.5 / 3)
    assert chatcore({"ARC-Challenge": 1.0, "HumanEval": 1.0, "SpellingBee": 1.0}) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="ARC-Easy"):
        chatcore({"ARC-Hard": 0.3})


def test_cli_on_a_checkpoint_with_the_shipped_slices(tok, tmp_path, monkeypatch, capsys):
    from nanochat_jax.checkpoint import save_model_checkpoint
    from train import chat_eval

    monkeypatch.setenv("NANOCHAT_JAX_BASE_DIR", str(tmp_path))
    tok.save(tmp_path / "tok")
    model = random_gpt(tiny_config(), seed=2)
    save_model_checkpoint(model, {"tokenizer_dir": str(tmp_path / "tok")}, tmp_path / "chatsft_checkpoints" / "d1", step=3)
    args = ["-i", "sft", "-a", "ARC-Easy|GSM8K", "-x", "3", "-m", "4", "-b", "2", "--task-dir", "embedded", "-d", "float32"]
    record = chat_eval.main(args)
    saved = load_results("sft", "d1", "chat")
    assert saved["results"] == record["results"] and set(saved["results"]) == {"ARC-Easy", "GSM8K"}
    assert saved["chatcore"] is None and "not benchmark scores" in saved["data"] and saved["step"] == 3
    arc = ARC("ARC-Easy", "validation", data_dir="embedded")
    assert saved["results"]["ARC-Easy"] == evaluate_task(arc, model, tok, max_problems=3)
    report = (report_dir() / "chat-evaluation-sft.md").read_text()
    assert "## Chat evaluation sft" in report and "- ARC-Easy:" in report and "ChatCORE" not in report
    with pytest.raises(SystemExit) as e:
        cli.main(lambda: chat_eval.main(["-i", "sft", "-a", "ARC-Easy|Jeopardy"]))
    assert e.value.code == 2 and "Jeopardy" in capsys.readouterr().err
