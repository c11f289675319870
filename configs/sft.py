"""SFT with nanochat's d20 values (chat_sft.py, 8c89661)."""

from configs.base import chat_defaults


def get_config():
    c = chat_defaults("mid")
    c.data.train, c.data.val = "sft", "sft_val"
    c.optim.init_lr_frac = 0.02
    c.loop.device_batch_size, c.loop.target_examples_per_step, c.loop.num_epochs = 4, 32, 1
    c.loop.eval_every, c.loop.eval_steps = 100, 100  # validation loss on SmolTalk test
    c.loop.eval_metrics_every, c.loop.eval_metrics_max_problems = 200, 1024  # MMLU / ARC-Easy accuracy
    c.data.metrics = "mmlu,arc_easy"
    return c
