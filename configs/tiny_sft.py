"""SFT of the tiny mid model (configs/tiny_mid.py) on the embedded chat data, on CPU in minutes."""

from configs.base import tiny_chat
from configs.sft import get_config as sft_config


def get_config():
    c = tiny_chat(sft_config(), "tiny_sft", "tiny_sft_val")
    c.loop.target_examples_per_step = 16
    c.loop.eval_steps = 8
    c.loop.eval_metrics_every, c.loop.eval_metrics_max_problems = 100, 128
    c.data.metrics = "mmlu_slice,arc_easy_slice"  # the shipped slices: not benchmark scores
    return c
