"""Midtraining the tiny base model (configs/tiny.py) on the embedded chat data, on CPU in minutes."""

from configs.base import tiny_chat
from configs.mid import get_config as mid_config


def get_config():
    c = tiny_chat(mid_config(), "tiny_mid", "tiny_mid_val")
    c.loop.total_batch_size = 8 * 256
    c.loop.eval_tokens = 8 * 8 * 256
    return c
