"""d32 (2,048 wide, 16 heads, 1.88B params): nanochat's run1000.sh model."""

from configs.base import pretrain_defaults


def get_config():
    c = pretrain_defaults()
    c.model.depth = 32
    c.loop.device_batch_size = 8  # as run1000.sh
    return c
