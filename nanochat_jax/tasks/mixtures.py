"""The named task mixtures of every chat stage (nanochat 8c89661's, and the embedded tiny ones).

A config names a mixture (``data.train = "mid"``); ``data.task_dir`` points every
hub dataset of it at a local directory (see ``tasks.hub``). ``tiny_*`` mixtures
use only the data shipped in the package, so the CPU pipeline runs offline.
"""

from __future__ import annotations

from nanochat_jax.tasks.arc import ARC
from nanochat_jax.tasks.common import TaskMixture
from nanochat_jax.tasks.customjson import IDENTITY_FILE, CustomJSON
from nanochat_jax.tasks.gsm8k import GSM8K
from nanochat_jax.tasks.hub import embedded_path
from nanochat_jax.tasks.mmlu import MMLU
from nanochat_jax.tasks.smoltalk import SmolTalk
from nanochat_jax.tasks.spellingbee import SimpleSpelling, SpellingBee


def _identity():
    return CustomJSON(embedded_path(IDENTITY_FILE))


MIXTURES = {
    # mid_train.py: SmolTalk, MMLU auxiliary_train, GSM8K, identity x2, SimpleSpelling 200K, SpellingBee 80K.
    "mid": lambda d: [SmolTalk("train", **d), MMLU("auxiliary_train", "train", **d), GSM8K("main", "train", **d),
                      _identity(), _identity(), SimpleSpelling(200_000, "train"), SpellingBee(80_000, "train")],
    "mid_val": lambda d: [SmolTalk("test", **d), MMLU("all", "test", stop=5200, **d), GSM8K("main", "test", stop=420, **d)],
    # chat_sft.py: ARC-Easy/Challenge train, GSM8K train, SmolTalk train[:10K], identity, spelling 300 + 300.
    "sft": lambda d: [ARC("ARC-Easy", "train", **d), ARC("ARC-Challenge", "train", **d), GSM8K("main", "train", **d),
                      SmolTalk("train", stop=10_000, **d), _identity(), SimpleSpelling(300, "train"), SpellingBee(300, "train")],
    "sft_val": lambda d: [SmolTalk("test", **d)],
    # Embedded only: synthetic calculator word problems, identity, spelling.
    "tiny_mid": lambda d: [GSM8K("synthetic", "train"), _identity(), _identity(), SimpleSpelling(2000, "train"),
                           SpellingBee(800, "train")],
    "tiny_mid_val": lambda d: [GSM8K("synthetic", "test"), SimpleSpelling(200, "test"), SpellingBee(100, "test")],
    "tiny_sft": lambda d: [GSM8K("synthetic", "train"), _identity(), SimpleSpelling(300, "train"), SpellingBee(300, "train")],
    "tiny_sft_val": lambda d: [GSM8K("synthetic", "test")],
}  # fmt: skip


EVAL_TASKS = {
    "mmlu": lambda d: MMLU("all", "test", **d),
    "arc_easy": lambda d: ARC("ARC-Easy", "test", **d),
    # Shipped slices (labelled so: their scores are not benchmark results).
    "mmlu_slice": lambda d: MMLU("all", "test", data_dir="embedded"),
    "arc_easy_slice": lambda d: ARC("ARC-Easy", "validation", data_dir="embedded"),
}


def eval_tasks(names: str, task_dir: str = "") -> dict:
    """``"mmlu,arc_easy"`` -> ``{"mmlu": MMLU(...), "arc_easy": ARC(...)}`` (empty string: none)."""
    unknown = [n for n in filter(None, names.split(",")) if n not in EVAL_TASKS]
    if unknown:
        raise ValueError(f"unknown evaluation task(s) {unknown}; expected some of {sorted(EVAL_TASKS)}")
    kwargs = {"data_dir": task_dir} if task_dir else {}
    return {n: EVAL_TASKS[n](kwargs) for n in filter(None, names.split(","))}


def mixture(name: str, task_dir: str = "") -> TaskMixture:
    if name not in MIXTURES:
        raise ValueError(f"unknown task mixture {name!r}; expected one of {sorted(MIXTURES)}")
    return TaskMixture(MIXTURES[name]({"data_dir": task_dir} if task_dir else {}))
