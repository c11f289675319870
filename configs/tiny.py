"""The CPU default: a real run on the embedded corpus in a few minutes on 2 cores.

Trains a 4,096-token BPE tokenizer on the sample corpus first if none exists,
then a d4 model (256 wide) at sequence length 256.
"""

from configs.base import pretrain_defaults


def get_config():
    c = pretrain_defaults()
    c.depth = 4
    c.max_seq_len = 256
    c.data_dir = "sample"
    c.tokenizer_dir = "sample_tokenizer"  # relative names resolve under $NANOCHAT_JAX_BASE_DIR
    c.train_tokenizer_if_missing = True
    c.tokenizer_vocab_size = 4096
    c.tokenizer_max_chars = 50_000_000
    c.device_batch_size = 8
    c.total_batch_size = 8 * 256
    c.num_iterations = 400
    c.eval_every = 100
    c.eval_tokens = 16 * 8 * 256
    c.sample_every = 200
    c.save_every = 200
    c.model_tag = "tiny"
    c.log_every = 10
    c.tokenizer_threads = 2
    return c
