"""The CPU default: a real run on the embedded corpus in a few minutes on 2 cores.

Trains a 4,096-token BPE tokenizer on the sample corpus first if none exists,
then a d4 model (256 wide) at sequence length 256.
"""

from configs.base import pretrain_defaults


def get_config():
    c = pretrain_defaults()
    c.model.depth = 4
    c.model.max_seq_len = 256
    c.data.data_dir = "sample"
    c.data.tokenizer_dir = "sample_tokenizer"  # relative names resolve under $NANOCHAT_JAX_BASE_DIR
    c.data.train_tokenizer_if_missing = True
    c.data.tokenizer_vocab_size = 4096
    c.data.tokenizer_max_chars = 50_000_000
    c.data.tokenizer_threads = 2
    c.loop.device_batch_size = 8
    c.loop.total_batch_size = 8 * 256
    c.loop.num_iterations = 400
    c.loop.eval_every = 100
    c.loop.eval_tokens = 16 * 8 * 256
    c.loop.sample_every = 200
    c.loop.core_metric_every, c.loop.core_metric_max_per_task, c.loop.core_bundle_dir = 200, 16, "slice"
    c.loop.save_every = 200
    c.loop.model_tag = "tiny"
    c.log.log_every = 10
    return c


def get_pipeline_config():
    """``python -m train.pipeline --config=configs/tiny.py``: every stage on the embedded data in <= 25 min on 2 cores.

    Shorter horizons than the stand-alone tiny configs (base 350 steps, mid 200 of
    its 359-step epoch, so mid's LR never reaches its decay; SFT 100 steps) and
    evaluations on slices of the shipped data.
    """
    from configs import tiny_mid, tiny_sft
    from configs.pipeline import base_eval_section, chat_eval_section, optional_config, pipeline_config

    base, mid, sft, rl = get_config(), tiny_mid.get_config(), tiny_sft.get_config(), optional_config("configs.tiny_rl")
    base.loop.num_iterations, base.loop.eval_every, base.loop.sample_every, base.loop.save_every = 350, 50, 350, 100
    base.loop.core_metric_every = -1  # CORE runs once, in the base_eval stage
    mid.loop.num_iterations, mid.loop.save_every = 200, 50
    sft.loop.num_iterations, sft.loop.save_every, sft.loop.eval_metrics_every = 100, 25, 100
    if rl is not None:
        rl.loop.num_iterations = min(rl.loop.num_iterations, 40) if rl.loop.num_iterations > 0 else 40
    base_eval = base_eval_section(evals="core,bpb,sample", max_per_task=50, bundle_dir="slice", split_tokens=16 * 8 * 256,
                                  device_batch_size=8)  # fmt: skip
    chat_eval = chat_eval_section(max_problems=50, max_new_tokens=128, task_dir="embedded")
    rl_eval = chat_eval_section(tasks="GSM8K", max_problems=50, max_new_tokens=128, task_dir="embedded")
    estimate_s = dict(tokenizer=30, base=300, base_eval=120, mid=300, mid_eval=90, sft=240, sft_eval=90, rl=180,
                      rl_eval=60, report=10)  # fmt: skip
    return pipeline_config(base, mid, sft, rl, base_eval=base_eval, chat_eval=chat_eval, rl_eval=rl_eval, num_shards=0,
                           estimate_s=estimate_s)  # fmt: skip
