"""RL on GSM8K with nanochat's d20 values (chat_rl.py, 8c89661): REINFORCE with a group-mean baseline."""

import ml_collections

from configs.base import chat_defaults


def get_config():
    c = chat_defaults("sft")
    c.objective = "reinforce"  # reinforce (nanochat) | best_of_n (rejection-sampling fine-tuning on the same rollouts)
    del c.data["train"], c.data["val"]  # RL reads one task, not a mixture
    c.data.subset = "main"  # GSM8K subset: main | socratic | synthetic (embedded); train split to learn, test to evaluate
    c.rollout = ml_collections.ConfigDict(dict(examples_per_step=16, num_samples=16, max_new_tokens=256, temperature=1.0, top_k=50,
                                               generate_rows=0))  # rows per engine call (KV cache size); 0 = the whole step at once
    c.optim.init_lr_frac, c.optim.weight_decay = 0.05, 0.0
    c.optim.grad_clip = 0.0  # chat_rl does not clip
    c.loop.device_batch_size = 8  # rows per pass: the loss normalises each pass by its own token count
    c.loop.num_epochs = 1
    c.loop.save_every, c.loop.eval_every = 60, 60
    c.loop.eval_examples, c.loop.eval_samples = 400, 8  # pass@1..8 on the test split, sampled at rollout temperature
    return c
