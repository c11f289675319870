"""The seed's "$100" run: d20 (561M params), 21,400 steps x 524,288 tokens on 8 GPUs."""

from configs.base import pretrain_defaults


def get_config():
    return pretrain_defaults()  # nanochat's defaults are the d20 run


def get_pipeline_config():
    """``python -m train.pipeline --config=configs/d20.py``: nanochat's speedrun.sh (8 GPUs, ~4 h), RL included."""
    from configs import mid, sft
    from configs.pipeline import base_eval_section, chat_eval_section, optional_config, pipeline_config

    estimate_s = dict(download=900, tokenizer=120, base=3 * 3600, base_eval=600, mid=1200, mid_eval=900, sft=600,
                      sft_eval=900, rl=3 * 3600, rl_eval=600, report=10)  # fmt: skip
    base = get_config()
    base.loop.save_every = 2000  # a stopped pipeline resumes pretraining from the last of these
    return pipeline_config(base, mid.get_config(), sft.get_config(), optional_config("configs.rl"),
                           base_eval=base_eval_section(), chat_eval=chat_eval_section(),
                           rl_eval=chat_eval_section(tasks="GSM8K"), num_shards=240, estimate_s=estimate_s)  # fmt: skip
