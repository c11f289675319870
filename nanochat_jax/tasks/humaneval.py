"""HumanEval (``openai/openai_humaneval``): 164 Python functions, scored by running their tests.

The user message is the prompt (signature + docstring); a completion passes
when its first code block (or the whole text), after the prompt's imports,
runs the row's ``check`` without error in a sandboxed subprocess.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile

from nanochat_jax.tasks.common import assistant, user
from nanochat_jax.tasks.hub import DatasetTask

TIMEOUT_S = 5.0
MEMORY_BYTES = 256 * 2**20
# Run first in the child: cap its memory, then remove what could harm the host
# (nanochat's reliability_guard list). Not a security boundary, a seatbelt.
GUARD = f"""\
import builtins, os, shutil, subprocess, sys
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_BYTES}, {MEMORY_BYTES}))
except (ImportError, ValueError, OSError):
    pass
for _module, _names in ((os, "kill system putenv remove removedirs rmdir fchdir setuid fork forkpty killpg rename renames "
                             "truncate replace unlink fchmod fchown chmod chown chroot lchown chdir"),
                        (shutil, "rmtree move chown"), (subprocess, "Popen"), (builtins, "help")):
    for _name in _names.split():
        setattr(_module, _name, None)
"""


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


def run_program(program: str, timeout: float = TIMEOUT_S) -> bool:
    """True when the program exits 0 within the timeout, in a fresh isolated interpreter in a temp dir."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            proc = subprocess.run([sys.executable, "-I", "-c", GUARD + program], cwd=tmp, env={}, timeout=timeout,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False
    return proc.returncode == 0


class HumanEval(DatasetTask):
    repo, name = "openai/openai_humaneval", "humaneval"
    eval_type = "generative"
    fields = {"task_id": str, "prompt": str, "canonical_solution": str, "test": str, "entry_point": str}

    def __init__(self, **kwargs):
        super().__init__("openai_humaneval", "test", **kwargs)

    def conversation(self, row: dict) -> dict:
        messages = [user(row["prompt"]), assistant(f"{row['prompt']}\n{row['canonical_solution']}")]
        return {"messages": messages, "entry_point": row["entry_point"], "test": row["test"]}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        imports = extract_imports(conversation["messages"][0]["content"])
        program = f"{imports}\n\n{extract_program(completion)}\n\n{conversation['test']}\ncheck({conversation['entry_point']})"
        return run_program(program)
