"""MMLU (``cais/mmlu``): 4-way multiple choice over 57 subjects.

``all``/test (14,042 questions) is the benchmark; ``auxiliary_train``/train
(~100K questions from ARC, MC_TEST, OBQA, RACE) is midtraining data.
"""

from __future__ import annotations

from nanochat_jax.tasks.common import MultipleChoice, assistant, render_mc, user
from nanochat_jax.tasks.hub import DatasetTask


class MMLU(MultipleChoice, DatasetTask):
    repo, name = "cais/mmlu", "mmlu"
    letters = ("A", "B", "C", "D")
    fields = {"question": str, "subject": str, "choices": list, "answer": int}

    def __init__(self, subset: str, split: str, **kwargs):
        if subset not in ("all", "auxiliary_train"):
            raise ValueError(f"MMLU subset must be all|auxiliary_train, got {subset!r}")
        if split not in ("train", "validation", "dev", "test"):
            raise ValueError(f"MMLU split must be train|validation|dev|test, got {split!r}")
        if subset == "auxiliary_train" and split != "train":
            raise ValueError("MMLU auxiliary_train has only the train split")
        super().__init__(subset, split, **kwargs)

    def prepare(self, row) -> dict:
        # auxiliary_train rows are wrapped in an extra `train` field; nanochat unwraps it too.
        if isinstance(row, dict) and set(row) == {"train"}:
            row = row["train"]
        return super().prepare(row)

    def conversation(self, row: dict) -> dict:
        if len(row["choices"]) != 4 or not 0 <= row["answer"] < 4:
            raise ValueError(f"an MMLU row has 4 choices and an answer in 0..3, got {len(row['choices'])} choices, answer {row['answer']}")
        messages = [user(render_mc(row["question"], self.letters, row["choices"])), assistant(self.letters[row["answer"]])]
        return {"messages": messages, "subject": row["subject"], "letters": self.letters}
