"""The seed's "$100" run: d20 (561M params), 21,400 steps x 524,288 tokens on 8 GPUs."""

from configs.base import pretrain_defaults


def get_config():
    return pretrain_defaults()  # nanochat's defaults are the d20 run
