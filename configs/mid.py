"""Midtraining with nanochat's d20 values (mid_train.py, 8c89661): one epoch of the classic mixture."""

from configs.base import chat_defaults


def get_config():
    c = chat_defaults("base")
    c.data.train, c.data.val = "mid", "mid_val"
    c.data.streams = 8  # as pretraining's: a step's rows come from 8 streams (nanochat's 8 ranks), on any topology
    c.loop.eval_every = 150  # val bpb on eval_tokens = 20 * 524,288; LRs as base, init_lr_frac 1.0
    return c
