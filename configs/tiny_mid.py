"""Midtraining the tiny base model (configs/tiny.py) on the embedded chat data, on CPU in minutes."""

from configs.mid import get_config as mid_config


def get_config():
    c = mid_config()
    c.source.model_tag = "tiny"
    c.data.train, c.data.val = "tiny_mid", "tiny_mid_val"
    c.model.max_seq_len = 256
    c.loop.device_batch_size = 8
    c.loop.total_batch_size = 8 * 256
    c.loop.eval_every = 50
    c.loop.eval_tokens = 8 * 8 * 256
    c.loop.save_every = 100
    c.log.log_every = 10
    return c
