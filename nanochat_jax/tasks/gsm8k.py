"""GSM8K (``openai/gsm8k``): grade-school math word problems, scored on the ``#### N`` answer.

A solution's calculator annotations ``<<expr=result>>`` become tool calls:
the text before is a text part, ``expr`` a python part and ``result`` a
python_output part, so SFT teaches the model to call the calculator.
``subset="synthetic"`` is nanochat_jax's embedded arithmetic set in the same
format (train/test), read from the package unless ``path=``/``data_dir=`` say otherwise.
"""

from __future__ import annotations

import re

from nanochat_jax.tasks.common import assistant, user
from nanochat_jax.tasks.hub import EMBEDDED, DatasetTask

ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
CALC_RE = re.compile(r"(<<[^>]+>>)")


def extract_answer(completion: str) -> str | None:
    """The number after ``#### `` with commas removed (the official GSM8K normalisation), else None."""
    match = ANSWER_RE.search(completion)
    return match.group(1).strip().replace(",", "") if match else None


def hash_answer_correct(conversation: dict, completion: str) -> bool:
    """True when the completion's ``#### N`` equals the reference's (its last text part)."""
    if not isinstance(completion, str):
        raise TypeError(f"a completion is a str, got {type(completion).__name__}")
    reference = extract_answer(conversation["messages"][-1]["content"][-1]["text"])
    return reference is not None and extract_answer(completion) == reference


def solution_parts(answer: str) -> list[dict]:
    """nanochat's split of a GSM8K solution into text / python / python_output parts."""
    parts = []
    for piece in CALC_RE.split(answer):
        if piece.startswith("<<") and piece.endswith(">>"):
            expr, _, result = piece[2:-2].rpartition("=") if "=" in piece else (piece[2:-2], "", "")
            parts += [{"type": "python", "text": expr}, {"type": "python_output", "text": result}]
        else:
            parts.append({"type": "text", "text": piece})
    return parts


class GSM8K(DatasetTask):
    repo, name = "openai/gsm8k", "gsm8k"
    eval_type = "generative"
    fields = {"question": str, "answer": str}

    def __init__(self, subset: str, split: str, **kwargs):
        if subset not in ("main", "socratic", "synthetic"):
            raise ValueError(f"GSM8K subset must be main|socratic|synthetic, got {subset!r}")
        if split not in ("train", "test"):
            raise ValueError(f"GSM8K split must be train|test, got {split!r}")
        if subset == "synthetic" and kwargs.get("path") is None and not kwargs.get("data_dir"):
            kwargs["data_dir"] = EMBEDDED  # not on the hub: it ships with the package
        super().__init__(subset, split, **kwargs)

    def conversation(self, row: dict) -> dict:
        parts = solution_parts(row["answer"])
        if extract_answer(parts[-1]["text"]) is None:
            raise ValueError("a GSM8K answer ends with '#### N' after its last calculator annotation")
        return {"messages": [user(row["question"]), assistant(parts)]}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return hash_answer_correct(conversation, completion)
