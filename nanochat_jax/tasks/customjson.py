"""CustomJSON: conversations from a jsonl file, one JSON array of messages per line (identity data)."""

from __future__ import annotations

import os
from pathlib import Path

from nanochat_jax.tasks.common import Task
from nanochat_jax.tasks.hub import TaskDataError, read_rows

IDENTITY_FILE = "identity_conversations.jsonl.gz"


def check_messages(messages) -> None:
    """At least two messages alternating user/assistant, starting with user, each with str content."""
    if not isinstance(messages, list) or len(messages) < 2:
        raise ValueError("a conversation is a JSON array of at least 2 messages")
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if not isinstance(message, dict) or message.get("role") != expected or not isinstance(message.get("content"), str):
            raise ValueError(f"message {i} must be {{'role': '{expected}', 'content': str}}, got {message!r:.80}")


class CustomJSON(Task):
    def __init__(self, filepath: str | os.PathLike, **kwargs):
        super().__init__(**kwargs)
        path = Path(filepath).expanduser()
        if not path.name.endswith((".jsonl", ".jsonl.gz")) or not path.is_file():
            raise TaskDataError(f"{path}: no such .jsonl / .jsonl.gz conversations file; the embedded identity conversations are "
                                f"nanochat_jax.tasks.embedded_path({IDENTITY_FILE!r})")
        self.conversations, where = read_rows([path])
        for i, messages in enumerate(self.conversations):
            try:
                check_messages(messages)
            except ValueError as e:
                raise TaskDataError(f"{where(i)}: {e}") from e
        if not self.conversations:
            raise TaskDataError(f"{path}: no conversations")

    def num_examples(self) -> int:
        return len(self.conversations)

    def get_example(self, index: int) -> dict:
        return {"messages": self.conversations[index]}
