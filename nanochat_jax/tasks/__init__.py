"""nanochat's tasks: conversation datasets for midtraining, SFT and RL, and the chat benchmarks.

    from nanochat_jax.tasks import MMLU, GSM8K, TaskMixture
    mmlu = MMLU(subset="all", split="test", data_dir="embedded")     # the shipped slice, offline
    gsm8k = GSM8K(subset="main", split="train")                       # downloaded from the HF hub once
    mix = TaskMixture([gsm8k, CustomJSON(embedded_path(IDENTITY_FILE))])

See ``hub.py`` for where rows come from and the README's "Chat data (tasks)".
"""

from nanochat_jax.tasks.arc import ARC
from nanochat_jax.tasks.common import Task, TaskMixture, TaskSequence, render_mc
from nanochat_jax.tasks.customjson import IDENTITY_FILE, CustomJSON
from nanochat_jax.tasks.gsm8k import GSM8K, extract_answer
from nanochat_jax.tasks.hub import EMBEDDED, EMBEDDED_DIR, TASK_DIR_ENV, TaskDataError, embedded_path
from nanochat_jax.tasks.humaneval import HumanEval
from nanochat_jax.tasks.mmlu import MMLU
from nanochat_jax.tasks.smoltalk import SmolTalk
from nanochat_jax.tasks.spellingbee import WORDS_FILE, SimpleSpelling, SpellingBee, load_words

__all__ = [
    "ARC", "CustomJSON", "EMBEDDED", "EMBEDDED_DIR", "GSM8K", "HumanEval", "IDENTITY_FILE", "MMLU", "SimpleSpelling",
    "SmolTalk", "SpellingBee", "TASK_DIR_ENV", "Task", "TaskDataError", "TaskMixture", "TaskSequence", "WORDS_FILE",
    "embedded_path", "extract_answer", "load_words", "render_mc",
]
