"""HumanEval (``openai/openai_humaneval``): 164 Python functions, scored by running their tests.

The user message is the prompt (signature + docstring); a completion passes
when its first code block (or the whole text), after the prompt's imports,
runs the row's ``check`` without error in ``nanochat_jax.execution``'s sandbox
(nanochat's limits: 5 s, 256 MB).
"""

from __future__ import annotations

import re

from nanochat_jax.execution import execute_code
from nanochat_jax.tasks.common import assistant, user
from nanochat_jax.tasks.hub import DatasetTask


def extract_imports(prompt: str) -> str:
    """The import lines at the top of a prompt (comments and blank lines skipped)."""
    imports = []
    for line in prompt.split("\n"):
        stripped = line.strip()
        if stripped.startswith(("import ", "from ")):
            imports.append(stripped)
        elif stripped and not stripped.startswith("#"):
            break
    return "\n".join(imports)


def extract_program(completion: str) -> str:
    """The first ```python (or bare ```) block of a completion, else the whole completion."""
    blocks = re.findall(r"```(?:python)?\s*\n(.*?)\n```", completion, re.DOTALL)
    return (blocks[0] if blocks else completion).strip()


class HumanEval(DatasetTask):
    repo, name = "openai/openai_humaneval", "humaneval"
    eval_type = "generative"
    fields = {"task_id": str, "prompt": str, "canonical_solution": str, "test": str, "entry_point": str}

    def __init__(self, **kwargs):
        super().__init__("openai_humaneval", "test", **kwargs)

    def conversation(self, row: dict) -> dict:
        messages = [user(row["prompt"]), assistant(f"{row['prompt']}\n{row['canonical_solution']}")]
        return {"messages": messages, "entry_point": row["entry_point"], "test": row["test"]}

    @staticmethod
    def program(conversation: dict, completion: str) -> str:
        """What runs: the prompt's imports, the completion's code, the row's tests, the check call."""
        imports = extract_imports(conversation["messages"][0]["content"])
        return f"{imports}\n\n{extract_program(completion)}\n\n{conversation['test']}\ncheck({conversation['entry_point']})"

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return execute_code(self.program(conversation, completion)).success
