"""d26 (1,664 wide, 13 heads, 1.08B params)."""

from configs.base import pretrain_defaults


def get_config():
    c = pretrain_defaults()
    c.model.depth = 26
    c.loop.device_batch_size = 16  # fits 80 GB without remat; grad accumulation doubles
    return c
