"""SpellingBee and SimpleSpelling: synthetic, seeded spelling tasks over a word list.

SpellingBee counts a letter in a word ("How many r are in strawberry?"): the
ideal answer spells the word, counts with a running tally, double-checks
with a python ``'word'.count('r')`` call and ends with ``#### n``.
SimpleSpelling just spells a word ("Spell the word: x" -> ``x:l,e,t,t,e,r,s``),
the hard part of SpellingBee for a small model, over-represented on purpose.
Example i of the train split is drawn with ``random.Random(i)``, of the test
split with ``Random(10_000_000 + i)``. The word list defaults to the embedded
one (``nanochat_jax/data/chat/words.txt.gz``); ``path=`` takes another, one
word per line (nanochat's is dwyl's ``words_alpha.txt``).
"""

from __future__ import annotations

import gzip
import os
import random
import string
from pathlib import Path

from nanochat_jax.tasks.common import Task, assistant, user
from nanochat_jax.tasks.gsm8k import hash_answer_correct
from nanochat_jax.tasks.hub import TaskDataError, embedded_path

LETTERS = string.ascii_lowercase
TEST_SEED_OFFSET = 10_000_000  # above any list's size, so train and test seeds never meet
WORDS_FILE = "words.txt.gz"

# nanochat's user prompts, for variety (English, then Spanish, Chinese, Korean, French, German, Japanese).
USER_MSG_TEMPLATES = [
    "How many {letter} are in the word {word}", "How many {letter} are in {word}",
    "Count the number of {letter} in {word}", "How many times does {letter} appear in {word}",
    "What's the count of {letter} in {word}", "In the word {word}, how many {letter} are there",
    "How many letter {letter} are in the word {word}", "Count how many {letter} appear in {word}",
    "Tell me the number of {letter} in {word}", "How many occurrences of {letter} are in {word}",
    "Find the count of {letter} in {word}", "Can you count the {letter} letters in {word}",
    "What is the frequency of {letter} in {word}", "How many {letter}s are in {word}",
    "How many {letter}'s are in {word}", "Count all the {letter} in {word}",
    "How many times is {letter} in {word}", "Number of {letter} in {word}",
    "Total count of {letter} in {word}", "How many {letter} does {word} have",
    "How many {letter} does {word} contain", "What's the number of {letter} in {word}",
    "{word} has how many {letter}", "In {word}, count the {letter}",
    "How many {letter} appear in {word}", "Count the {letter} in {word}",
    "Give me the count of {letter} in {word}", "How many instances of {letter} in {word}",
    "Show me how many {letter} are in {word}", "Calculate the number of {letter} in {word}",
    "¿Cuántas {letter} hay en {word}?", "¿Cuántas veces aparece {letter} en {word}?",
    "Cuenta las {letter} en {word}", "¿Cuántas letras {letter} tiene {word}?",
    "{word}中有多少个{letter}", "{word}里有几个{letter}", "数一下{word}中的{letter}", "{word}这个词里有多少{letter}",
    "{word}에 {letter}가 몇 개 있나요", "{word}에서 {letter}의 개수는", "{word}에 {letter}가 몇 번 나오나요", "{word}라는 단어에 {letter}가 몇 개",
    "Combien de {letter} dans {word}", "Combien de fois {letter} apparaît dans {word}", "Compte les {letter} dans {word}",
    "Wie viele {letter} sind in {word}", "Wie oft kommt {letter} in {word} vor", "Zähle die {letter} in {word}",
    "{word}に{letter}は何個ありますか", "{word}の中に{letter}がいくつ", "{word}に{letter}が何回出てくる",
]


def load_words(path: str | os.PathLike | None = None) -> list[str]:
    """The word list, one word per line (.txt or .txt.gz); the embedded one by default."""
    path = Path(path).expanduser() if path is not None else embedded_path(WORDS_FILE)
    if not path.is_file():
        raise TaskDataError(f"{path}: no such word list (one word per line); leave path=None for the embedded one")
    with (gzip.open if path.name.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
        words = [line.strip() for line in f if line.strip()]
    if not words:
        raise TaskDataError(f"{path}: the word list is empty")
    return words


class SpellingTask(Task):
    """``size`` examples drawn from seeds; the split picks the seed range."""

    eval_type = "generative"

    def __init__(self, size: int = 1000, split: str = "train", path: str | os.PathLike | None = None, **kwargs):
        super().__init__(**kwargs)
        if split not in ("train", "test"):
            raise ValueError(f"{type(self).__name__} split must be train|test, got {split!r}")
        if size < 1:
            raise ValueError(f"{type(self).__name__} size must be positive, got {size}")
        self.size, self.split, self.words = size, split, load_words(path)

    def num_examples(self) -> int:
        return self.size

    def rng(self, index: int) -> random.Random:
        return random.Random(index if self.split == "train" else TEST_SEED_OFFSET + index)


class SpellingBee(SpellingTask):
    def get_example(self, index: int) -> dict:
        rng = self.rng(index)
        word = rng.choice(self.words)
        letter = rng.choice(word) if rng.random() < 0.9 else rng.choice(LETTERS)  # mostly a letter of the word
        count = word.count(letter)
        template = rng.choice(USER_MSG_TEMPLATES)
        if rng.random() < 0.3:
            template = template.lower()
        letter_quote, word_quote = rng.choice(["", "'", '"']), rng.choice(["", "'", '"'])
        question = template.format(letter=f"{letter_quote}{letter}{letter_quote}", word=f"{word_quote}{word}{word_quote}")
        if rng.random() < 0.5:
            question += "?"
        manual = (f"We are asked to find the number '{letter}' in the word '{word}'. Let me try a manual approach first.\n\n"
                  f"First spell the word out:\n{word}:{','.join(word)}\n\nThen count the occurrences of '{letter}':\n")
        running = 0
        for i, char in enumerate(word, 1):
            if char == letter:
                running += 1
                manual += f"{i}:{char} hit! count={running}\n"  # no space in "i:char": " a" and "a" are different tokens
            else:
                manual += f"{i}:{char}\n"
        parts = [
            {"type": "text", "text": manual + f"\nThis gives us {running}."},
            {"type": "text", "text": "\n\nLet me double check this using Python:\n\n"},
            {"type": "python", "text": f"'{word}'.count('{letter}')"},
            {"type": "python_output", "text": str(count)},
            {"type": "text", "text": f"\n\nPython gives us {count}.\n\nMy final answer is:\n\n#### {count}"},
        ]
        return {"messages": [user(question), assistant(parts)]}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return hash_answer_correct(conversation, completion)


class SimpleSpelling(SpellingTask):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        random.Random(42).shuffle(self.words)  # a different word order from SpellingBee's

    def get_example(self, index: int) -> dict:
        word = self.rng(index).choice(self.words)
        return {"messages": [user(f"Spell the word: {word}"), assistant(f"{word}:{','.join(word)}")]}
