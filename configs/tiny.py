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
    c.loop.save_every = 200
    c.loop.model_tag = "tiny"
    c.log.log_every = 10
    return c
