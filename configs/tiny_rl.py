"""RL of the tiny SFT model (configs/tiny_sft.py, tag "tiny") on the embedded synthetic arithmetic set, on CPU in minutes."""

from configs.rl import get_config as rl_config


def get_config():
    c = rl_config()
    c.source.model_tag = "tiny"
    c.data.subset = "synthetic"
    c.model.max_seq_len = 256
    c.rollout.examples_per_step, c.rollout.num_samples, c.rollout.max_new_tokens = 8, 8, 64
    c.loop.num_iterations = 60
    c.loop.eval_every, c.loop.save_every = 20, 30
    c.loop.eval_examples = 64
    c.log.log_every = 5
    return c
