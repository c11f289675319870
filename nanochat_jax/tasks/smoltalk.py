"""SmolTalk (``HuggingFaceTB/smol-smoltalk``): general conversations, train ~460K / test ~24K."""

from __future__ import annotations

from nanochat_jax.tasks.hub import DatasetTask


class SmolTalk(DatasetTask):
    repo, name = "HuggingFaceTB/smol-smoltalk", "smoltalk"
    fields = {"messages": list}

    def __init__(self, split: str, **kwargs):
        if split not in ("train", "test"):
            raise ValueError(f"SmolTalk split must be train|test, got {split!r}")
        super().__init__("default", split, **kwargs)

    def conversation(self, row: dict) -> dict:
        messages = row["messages"]
        rest = messages[1:] if messages and messages[0].get("role") == "system" else messages  # an optional system prompt
        if len(rest) < 2:
            raise ValueError("a SmolTalk conversation has at least a user and an assistant message")
        for i, message in enumerate(rest):
            expected = "user" if i % 2 == 0 else "assistant"
            if message.get("role") != expected or not isinstance(message.get("content"), str):
                raise ValueError(f"message {i} must be {expected} with str content, got {message.get('role')!r}")
        return {"messages": messages}
