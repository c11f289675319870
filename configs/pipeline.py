"""The one-command pipeline's config: one section per stage, each a stage config (``train.pipeline``).

Sections: ``base`` (its ``data`` section also drives the tokenizer), ``base_eval``,
``mid``, ``mid_eval``, ``sft``, ``sft_eval``, ``rl``, ``rl_eval`` (the last two
only where ``configs/<rl config>.py`` exists) and ``pipeline`` (shard download,
time estimates). Override any field as ``--config.sft.loop.device_batch_size=8``.
A config file offers a pipeline with ``get_pipeline_config()`` beside its
``get_config()`` (the pretraining config, unchanged).
"""

import importlib

import ml_collections

CHAT_TASKS = "ARC-Easy|ARC-Challenge|MMLU|GSM8K|HumanEval|SpellingBee"


def base_eval_section(**overrides) -> ml_collections.ConfigDict:
    """``train.base_eval.evaluate``'s arguments (bundle_dir "" = the downloaded bundle)."""
    fields = dict(evals="core,bpb,sample", max_per_task=-1, bundle_dir="", split_tokens=20 * 524_288, device_batch_size=32)
    return ml_collections.ConfigDict({**fields, **overrides})


def chat_eval_section(**overrides) -> ml_collections.ConfigDict:
    """``train.chat_eval.evaluate``'s arguments (max_problems -1 = all; task_dir "embedded" = the shipped slices)."""
    fields = dict(tasks=CHAT_TASKS, max_problems=-1, max_new_tokens=512, num_samples=1, temperature=0.0, top_k=50,
                  batch_size=8, task_dir="")  # fmt: skip
    return ml_collections.ConfigDict({**fields, **overrides})


def optional_config(module: str) -> ml_collections.ConfigDict | None:
    """A stage config module's ``get_config()``, or None while that stage is not part of the project."""
    try:
        return importlib.import_module(module).get_config()
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        return None


def pipeline_config(base, mid, sft, rl, *, base_eval, chat_eval, rl_eval, num_shards: int, estimate_s: dict):
    """Chain the stages by model tag (each continues the previous stage's checkpoint of the same tag)."""
    tag = base.loop.model_tag or f"d{base.model.depth}"
    c = ml_collections.ConfigDict(dict(base=base, base_eval=base_eval, mid=mid, mid_eval=chat_eval, sft=sft,
                                       sft_eval=ml_collections.ConfigDict(chat_eval.to_dict())))  # fmt: skip
    for section in (mid, sft, rl):
        if section is not None and not section.source.model_tag:
            section.source.model_tag = tag
    if rl is not None:
        c.rl, c.rl_eval = rl, rl_eval
    c.pipeline = ml_collections.ConfigDict(dict(num_shards=num_shards, download_workers=8, estimate_s=estimate_s))
    return c
