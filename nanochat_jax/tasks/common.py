"""The Task interface every dataset shares (nanochat ``tasks/common.py``).

A task is a list of conversations ``{"messages": [...], ...}`` plus, for a
benchmark, its scoring rule. Slicing (start/stop/step), mixtures and
sequences are views, so a mixture of slices never copies a dataset.
"""

from __future__ import annotations

import random


class Task:
    """A start:stop:step view over ``num_examples()`` conversations."""

    eval_type: str  # "categorical" (pick a letter) or "generative" (sample a completion)

    def __init__(self, start: int = 0, stop: int | None = None, step: int = 1):
        if start < 0 or step < 1 or (stop is not None and stop < start):
            raise ValueError(f"bad task slice start={start} stop={stop} step={step}: need 0 <= start <= stop and step >= 1")
        self.start, self.stop, self.step = start, stop, step

    def num_examples(self) -> int:
        raise NotImplementedError

    def get_example(self, index: int) -> dict:
        raise NotImplementedError

    def __len__(self) -> int:
        n = self.num_examples()
        stop = n if self.stop is None else min(self.stop, n)  # a stop past the end is capped, as in nanochat
        return max(0, -(-(stop - self.start) // self.step))

    def __getitem__(self, index: int) -> dict:
        if not isinstance(index, int):
            raise TypeError(f"task index must be an int, got {type(index).__name__}")
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a task of {len(self)} conversations")
        return self.get_example(self.start + index * self.step)

    def evaluate(self, conversation: dict, completion: str) -> bool:
        raise NotImplementedError

    def reward(self, conversation: dict, completion: str) -> float:
        """RL reward: 1.0 for a correct completion, else 0.0 (nanochat's GSM8K/SpellingBee rule)."""
        return float(self.evaluate(conversation, completion))


class TaskMixture(Task):
    """Tasks interleaved by one fixed shuffle (``random.Random(42)``, as nanochat).

    Listing a task twice oversamples it (two epochs of it in one pass).
    """

    def __init__(self, tasks: list[Task], **kwargs):
        super().__init__(**kwargs)
        if not tasks:
            raise ValueError("a TaskMixture needs at least one task")
        self.tasks = list(tasks)
        self.index_map = [(t, i) for t, task in enumerate(self.tasks) for i in range(len(task))]
        random.Random(42).shuffle(self.index_map)

    def num_examples(self) -> int:
        return len(self.index_map)

    def get_example(self, index: int) -> dict:
        task, local = self.index_map[index]
        return self.tasks[task][local]


class TaskSequence(Task):
    """Tasks one after another (a curriculum), in the order given."""

    def __init__(self, tasks: list[Task], **kwargs):
        super().__init__(**kwargs)
        if not tasks:
            raise ValueError("a TaskSequence needs at least one task")
        self.tasks = list(tasks)
        self.lengths = [len(task) for task in self.tasks]

    def num_examples(self) -> int:
        return sum(self.lengths)

    def get_example(self, index: int) -> dict:
        for task, length in zip(self.tasks, self.lengths):
            if index < length:
                return task[index]
            index -= length
        raise IndexError(index)


def render_mc(question: str, letters, choices) -> str:
    """nanochat's multiple-choice prompt.

    The letter comes *after* its choice (small models bind it better), with
    no space before it: the assistant answers with the bare ``A``, and
    `` A`` would be a different token.
    """
    query = f"Multiple Choice question: {question}\n"
    query += "".join(f"- {choice}={letter}\n" for letter, choice in zip(letters, choices))
    return query + "\nRespond only with the letter of the correct answer."


class MultipleChoice:
    """Scoring shared by MMLU and ARC: the predicted letter must be the gold one."""

    eval_type = "categorical"

    def evaluate(self, conversation: dict, completion: str) -> bool:
        letters = conversation["letters"]
        if completion not in letters:
            # nanochat asserts this: categorical evaluation clamps the prediction to the letters.
            raise ValueError(f"a multiple-choice answer must be one of {list(letters)}, got {completion!r}")
        return completion == conversation["messages"][-1]["content"]


def user(content) -> dict:
    return {"role": "user", "content": content}


def assistant(content) -> dict:
    return {"role": "assistant", "content": content}
