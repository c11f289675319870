"""The flags the benchmarks share, so that one name means one thing in every script.

Imports nothing heavy: ``bench.mfu``'s parent process parses these before any
framework is loaded, and the GPU machines lack grain, rustbpe and friends.
"""

from __future__ import annotations

import argparse

DATA_HELP = '"sample" (embedded corpus), "" (<base dir>/base_data) or a directory of parquet shards'
TOKENIZER_HELP = '"" = <base dir>/tokenizer, a name under the base dir, or a path'


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """The model's shape and how JAX runs it (nanochat's classic depth dial)."""
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--vocab_size", type=int, default=65536)
    p.add_argument("--seq_len", type=int, default=2048)
    p.add_argument("--compute_dtype", default="auto", help="JAX: auto = bfloat16 on GPU/TPU, float32 on CPU")
    p.add_argument("--scan_layers", action="store_true")


def add_step_flags(p: argparse.ArgumentParser, *, steps: int, warmup: int) -> None:
    """The train step as ``train.pretrain`` compiles it, and where its batches come from."""
    p.add_argument("--device_batch_size", type=int, default=32)
    p.add_argument("--grad_accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--steps", type=int, default=steps, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed steps after compilation")
    p.add_argument("--attention_impl", default="auto", choices=["auto", "xla", "cudnn"])
    p.add_argument("--remat", default="none", choices=["none", "dots", "full"])
    p.add_argument("--ce_chunk_size", type=int, default=0, help="JAX: loss over sequence chunks of this many positions (0 = off)")
    p.add_argument("--no_shard_muon", action="store_true")
    add_data_flags(p, data_dir=None, data_help=f"JAX on real data through the project loader: {DATA_HELP}; default synthetic tokens")
    p.add_argument("--loader_mode", default="stream", choices=["stream", "bestfit"])


def add_data_flags(p: argparse.ArgumentParser, *, data_dir: str | None, tokenizer_dir: str | None = "",
                   data_help: str = DATA_HELP) -> None:
    p.add_argument("--data_dir", default=data_dir, help=data_help)
    p.add_argument("--tokenizer_dir", default=tokenizer_dir, help=TOKENIZER_HELP)


def resolve_dtype(flag: str) -> str:
    from nanochat_jax import hardware

    return hardware.default_compute_dtype() if flag == "auto" else flag


def load_tokenizer(flag: str):
    """The tokenizer ``--tokenizer_dir`` names, resolved as the config field ``data.tokenizer_dir`` is."""
    from nanochat_jax.tokenizer import Tokenizer, tokenizer_dir

    return Tokenizer.from_directory(tokenizer_dir(flag))
