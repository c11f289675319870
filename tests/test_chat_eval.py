"""Categorical chat evaluation against a direct, unbatched, unpadded computation on real shipped rows."""

import jax
import numpy as np

from model_helpers import random_gpt
from nanochat_jax import sharding
from nanochat_jax.chat_eval import categorical_accuracy
from nanochat_jax.gpt import GPTConfig
from nanochat_jax.tasks import ARC
from nanochat_jax.tokenizer import Tokenizer
from nanochat_jax.train_step import split_model


def test_categorical_accuracy_is_the_argmax_over_the_letters_of_the_last_prompt_logits():
    task = ARC("ARC-Easy", "validation", data_dir="embedded", stop=8)
    texts = [m["content"] for i in range(len(task)) for m in task[i]["messages"]]
    tokenizer = Tokenizer.train_from_iterator(iter(texts * 5 + ["A B C D 1 2 3 4"] * 20), 400)
    model = random_gpt(GPTConfig(sequence_len=512, vocab_size=400, n_layer=1, n_head=1, n_kv_head=1, n_embd=64), seed=2)
    graphdef, params = split_model(model)
    got = categorical_accuracy(graphdef, params, tokenizer, task, sharding.make_mesh(jax.devices()[:1]), batch_size=4)

    correct = 0
    for i in range(len(task)):
        conversation = task[i]
        prompt = tokenizer.render_for_completion(conversation)
        assert prompt[-1] == tokenizer.encode_special("<|assistant_start|>")
        last = np.asarray(model(np.asarray([prompt], np.int32)))[0, -1]
        letters = conversation["letters"]
        scores = [last[tokenizer.encode(letter)[0]] for letter in letters]
        correct += letters[int(np.argmax(scores))] == conversation["messages"][-1]["content"]
    assert got == correct / len(task)
    assert 0 < correct < len(task)  # a random model gets some right and some wrong: the comparison means something
