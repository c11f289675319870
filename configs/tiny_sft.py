"""SFT of the tiny mid model (configs/tiny_mid.py) on the embedded chat data, on CPU in minutes."""

from configs.sft import get_config as sft_config


def get_config():
    c = sft_config()
    c.source.model_tag = "tiny"
    c.data.train, c.data.val = "tiny_sft", "tiny_sft_val"
    c.model.max_seq_len = 256
    c.loop.device_batch_size = 8
    c.loop.target_examples_per_step = 16
    c.loop.eval_every = 50
    c.loop.eval_steps = 8
    c.loop.save_every = 100
    c.log.log_every = 10
    return c
