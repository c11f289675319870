"""ARC (``allenai/ai2_arc``): grade-school science multiple choice, ARC-Easy and ARC-Challenge."""

from __future__ import annotations

from nanochat_jax.tasks.common import MultipleChoice, assistant, render_mc, user
from nanochat_jax.tasks.hub import DatasetTask


class ARC(MultipleChoice, DatasetTask):
    repo, name = "allenai/ai2_arc", "arc"
    fields = {"question": str, "choices": dict, "answerKey": str}

    def __init__(self, subset: str, split: str, **kwargs):
        if subset not in ("ARC-Easy", "ARC-Challenge"):
            raise ValueError(f"ARC subset must be ARC-Easy|ARC-Challenge, got {subset!r}")
        if split not in ("train", "validation", "test"):
            raise ValueError(f"ARC split must be train|validation|test, got {split!r}")
        super().__init__(subset, split, **kwargs)

    def conversation(self, row: dict) -> dict:
        letters, choices = list(row["choices"]["label"]), list(row["choices"]["text"])
        if len(letters) != len(choices) or row["answerKey"] not in letters:
            raise ValueError(f"ARC answerKey {row['answerKey']!r} must be one of the labels {letters}, one per choice")
        messages = [user(render_mc(row["question"], letters, choices)), assistant(row["answerKey"])]
        return {"messages": messages, "letters": letters}
