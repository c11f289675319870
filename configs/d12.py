"""d12 (768 wide, 6 heads): a quick GPT-2-small-sized run."""

from configs.base import pretrain_defaults


def get_config():
    c = pretrain_defaults()
    c.model.depth = 12
    return c
