"""CI's pipeline: every stage of ``configs/tiny.py``'s pipeline for a handful of steps on a d1 model (seconds each).

    python -m train.pipeline --config=configs/smoke.py

Sized for the test suite's 8 simulated CPU devices (one row per device) but
runs on any device count that divides 8.
"""

from configs import tiny


def _shrink(c, steps: int, save_every: int):
    c.model.max_seq_len = 64
    c.loop.device_batch_size = 1
    c.loop.num_iterations, c.loop.save_every, c.loop.eval_every = steps, save_every, steps
    c.log.log_every, c.log.tensorboard = 1, False
    return c


def get_config():
    c = _shrink(tiny.get_config(), 4, 2)
    c.model.depth = 1
    c.data.tokenizer_vocab_size, c.data.tokenizer_max_chars, c.data.tokenizer_threads = 320, 300_000, 1
    c.loop.total_batch_size, c.loop.eval_tokens, c.loop.sample_every, c.loop.model_tag = 512, 512, -1, "smoke"
    c.loop.core_metric_every = -1  # CORE's prompts do not fit 64 positions of a 320-token vocabulary
    return c


def get_pipeline_config():
    c = tiny.get_pipeline_config()
    c.base = get_config()
    for name in ("mid", "sft", "rl"):
        if name in c:
            _shrink(c[name], 20 if name == "sft" else 4, 2)
            c[name].source.model_tag = "smoke"
    c.mid.loop.total_batch_size, c.mid.loop.eval_tokens = 512, 512
    c.sft.loop.target_examples_per_step, c.sft.loop.eval_steps = 8, 1
    c.sft.loop.eval_metrics_every, c.sft.loop.eval_metrics_max_problems = 20, 8
    if "rl" in c:
        c.rl.rollout.update(dict(examples_per_step=2, num_samples=4, max_new_tokens=8))
        c.rl.loop.update(dict(eval_examples=4, eval_samples=2))
    c.base_eval.update(dict(evals="bpb,sample", split_tokens=512, device_batch_size=1))
    for name in ("mid_eval", "sft_eval", "rl_eval"):
        if name in c:
            c[name].update(dict(max_problems=4, max_new_tokens=8, batch_size=4))
    return c
