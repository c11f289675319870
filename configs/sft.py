"""SFT with nanochat's d20 values (chat_sft.py, 8c89661)."""

from configs.base import chat_defaults


def get_config():
    c = chat_defaults("mid")
    c.data.train, c.data.val = "sft", "sft_val"
    c.optim.init_lr_frac = 0.02
    c.loop.device_batch_size = 4
    c.loop.target_examples_per_step = 32
    c.loop.num_epochs = 1
    c.loop.eval_every = 100
    c.loop.eval_steps = 100
    return c
