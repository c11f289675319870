"""Config sections every stage shares, with nanochat's classic defaults and field names.

A stage config is ``ConfigDict(model=..., data=..., optim=..., loop=..., log=...)``;
fields are overridden as ``--config.<section>.<field>=<value>``. See README
"Config fields" for the meaning of each.
"""

import ml_collections


def model_section() -> ml_collections.ConfigDict:
    """Architecture (n_embd = 64*depth, head_dim 128) and execution switches."""
    return ml_collections.ConfigDict(dict(
        depth=20,
        max_seq_len=2048,
        compute_dtype="auto",  # auto = bfloat16 on GPU/TPU, float32 on CPU
        attention_impl="auto",  # auto = cudnn on NVIDIA GPUs, xla elsewhere
        remat="none",  # none | dots | full
        scan_layers=False,
        ce_chunk_size=0,  # >0: loss over sequence chunks of this many positions (saves the full fp32 logits)
    ))


def data_section() -> ml_collections.ConfigDict:
    """Pretraining text and its tokenizer."""
    return ml_collections.ConfigDict(dict(
        data_dir="",  # "" = $NANOCHAT_JAX_BASE_DIR/base_data (FineWeb-Edu); "sample" = embedded corpus
        tokenizer_dir="",  # "" = $NANOCHAT_JAX_BASE_DIR/tokenizer
        train_tokenizer_if_missing=False,
        tokenizer_vocab_size=65536,
        tokenizer_max_chars=2_000_000_000,
        tokenizer_doc_cap=10_000,
        loader_mode="stream",  # stream (classic) | bestfit (BOS-aligned)
        streams=8,  # data streams: a step's rows come from these, whatever the process count (must divide its rows)
        tokenizer_threads=4,
    ))


def optim_section() -> ml_collections.ConfigDict:
    """AdamW (embeddings) + Muon (matrices), clipping and the LR schedule's knobs."""
    return ml_collections.ConfigDict(dict(
        embedding_lr=0.2,
        unembedding_lr=0.004,
        matrix_lr=0.02,
        weight_decay=0.0,
        grad_clip=1.0,
        shard_muon=True,
        param_sharding="replicated",  # replicated (nanochat's DDP) | fsdp (params + optimizer state split over devices, ZeRO-3)
        warmup_ratio=0.0,
        warmdown_ratio=0.2,
        final_lr_frac=0.0,
        init_lr_frac=1.0,  # SFT 0.02, RL 0.05: every LR starts at this fraction of the above
    ))


def loop_section() -> ml_collections.ConfigDict:
    """Horizon, batch, evaluation cadence and checkpoints."""
    return ml_collections.ConfigDict(dict(
        num_iterations=-1,  # -1 = the stage's own horizon
        device_batch_size=32,
        total_batch_size=524_288,  # tokens per optimizer step
        eval_every=250,
        eval_tokens=20 * 524_288,
        model_tag="",  # "" = d<depth>
        save_every=-1,  # -1 = only at the end
        keep_checkpoints=3,
        resume=False,  # resume from the latest checkpoint of model_tag
        resume_step=-1,  # or from this step
        seed=42,
    ))


def log_section() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(log_every=1, tensorboard=True))


def pretrain_defaults() -> ml_collections.ConfigDict:
    """nanochat's base_train flags (the d20 run)."""
    c = ml_collections.ConfigDict(dict(
        model=model_section(), data=data_section(), optim=optim_section(), loop=loop_section(), log=log_section()
    ))
    # Horizon: num_iterations > target_flops > target_param_data_ratio.
    c.loop.target_flops = -1.0
    c.loop.target_param_data_ratio = 20.0
    c.loop.sample_every = 2000
    c.loop.sample_max_tokens = 16
    c.loop.core_metric_every = 2000  # CORE during pretraining (and at the end); -1 = never
    c.loop.core_metric_max_per_task = 500
    c.loop.core_bundle_dir = ""  # "" = the DCLM bundle (downloaded once), "slice" = the embedded slice, or a path
    return c


def chat_defaults(source_stage: str) -> ml_collections.ConfigDict:
    """Shared by the stages that continue a checkpoint (mid, SFT, RL): the model comes from ``source``."""
    model = model_section()
    del model["depth"]  # the source checkpoint fixes the architecture; the rest are execution switches
    source = ml_collections.ConfigDict(dict(stage=source_stage, model_tag="", step=-1))  # "" = largest d<N>; -1 = latest
    data = ml_collections.ConfigDict(dict(train="", val="", task_dir=""))  # mixture names; task_dir "" = HF hub / $NANOCHAT_JAX_TASK_DIR
    return ml_collections.ConfigDict(dict(source=source, model=model, data=data, optim=optim_section(), loop=loop_section(), log=log_section()))


def tiny_chat(c: ml_collections.ConfigDict, train: str, val: str) -> ml_collections.ConfigDict:
    """Shrink a chat stage to the tiny base model (configs/tiny.py) and the embedded chat data."""
    c.source.model_tag = "tiny"
    c.data.train, c.data.val = train, val
    c.model.max_seq_len = 256
    c.loop.device_batch_size = 8
    c.loop.eval_every, c.loop.save_every = 50, 100
    c.log.log_every = 10
    return c
