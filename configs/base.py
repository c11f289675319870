"""Defaults shared by every pretraining config: nanochat's classic base_train flags.

Each field keeps nanochat's name; see README "Config fields" for the meaning.
"""

import ml_collections


def pretrain_defaults() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Model: n_embd = 64*depth, head_dim 128.
    c.depth = 20
    c.max_seq_len = 2048
    c.compute_dtype = "auto"  # auto = bfloat16 on GPU/TPU, float32 on CPU
    c.attention_impl = "auto"  # auto = cudnn on NVIDIA GPUs, xla elsewhere
    c.remat = "none"  # none | dots | full
    c.scan_layers = False
    c.ce_chunk_size = 0  # >0: loss over sequence chunks of this many positions (saves the full fp32 logits)
    # Tokenizer and data.
    c.data_dir = ""  # "" = $NANOCHAT_JAX_BASE_DIR/base_data (FineWeb-Edu); "sample" = embedded corpus
    c.tokenizer_dir = ""  # "" = $NANOCHAT_JAX_BASE_DIR/tokenizer
    c.train_tokenizer_if_missing = False
    c.tokenizer_vocab_size = 65536
    c.tokenizer_max_chars = 2_000_000_000
    c.tokenizer_doc_cap = 10_000
    c.loader_mode = "stream"  # stream (classic) | bestfit (BOS-aligned)
    c.tokenizer_threads = 4
    # Horizon: num_iterations > target_flops > target_param_data_ratio.
    c.num_iterations = -1
    c.target_flops = -1.0
    c.target_param_data_ratio = 20.0
    # Batch.
    c.device_batch_size = 32
    c.total_batch_size = 524_288
    # Optimizer.
    c.embedding_lr = 0.2
    c.unembedding_lr = 0.004
    c.matrix_lr = 0.02
    c.weight_decay = 0.0
    c.grad_clip = 1.0
    c.shard_muon = True
    # LR schedule.
    c.warmup_ratio = 0.0
    c.warmdown_ratio = 0.2
    c.final_lr_frac = 0.0
    # Evaluation and sampling.
    c.eval_every = 250
    c.eval_tokens = 20 * 524_288
    c.sample_every = 2000
    c.sample_max_tokens = 16
    # Checkpoints.
    c.model_tag = ""  # "" = d<depth>
    c.save_every = -1  # -1 = only at the end
    c.keep_checkpoints = 3
    c.resume = False  # resume from the latest checkpoint of model_tag
    c.resume_step = -1  # or from this step
    # Logging.
    c.log_every = 1
    c.tensorboard = True
    c.seed = 42
    return c
