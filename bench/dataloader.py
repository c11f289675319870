"""Benchmark the pretraining dataloader's throughput (tokens/s) on local shards.

    python -m bench.dataloader [--data_dir sample] [--B 32] [--T 2048] [--steps 40]
                               [--modes stream bestfit] [--tokenizer_threads 4]
                               [--tokenizer_batch_size 128] [--buffer_size 1000] [--prefetch 2]
                               [--vocab_size 4096] [--tokenizer_dir DIR]

The consumer does nothing but pull ``(inputs, targets)`` batches, so the number
is the rate the loader can feed a training step (a step slower than
``B*T / tokens_per_s`` never waits). The tokenizer is a real BPE: loaded from
``--tokenizer_dir``, or trained with ``Tokenizer.train_from_iterator`` on the
first ``--train_chars`` characters of the train split. Timing starts after
``--warmup`` batches (so buffer filling and the first row-group reads are not
counted; the "first batch" column shows that start-up cost separately).

For reference the table ends with the raw tokenizer speed on the same text
(``Tokenizer.encode`` on 128-document batches), the upper bound for any mode.
"tokens/CPU-s" divides by the CPU time of all the process's threads, which
stays meaningful when other work shares the machine's cores.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import os
import platform
import sys
import time

from bench.common import add_data_flags, load_tokenizer
from nanochat_jax.dataloader import build_pretrain_loader
from nanochat_jax.dataset import parquet_files_for_split, resolve_data_dir
from nanochat_jax.tokenizer import Tokenizer
from train.tokenizer import iter_train_texts

KNOBS = ("tokenizer_threads", "tokenizer_batch_size", "buffer_size", "prefetch")  # the loader's, at its defaults


def train_texts(data_dir, max_chars: int) -> list[str]:
    """The train split's first ``max_chars`` characters, as the tokenizer trainer reads them."""
    return list(iter_train_texts(parquet_files_for_split("train", data_dir), max_chars, doc_cap=10_000))


def get_tokenizer(args) -> tuple[Tokenizer, str]:
    if args.tokenizer_dir is not None:
        return load_tokenizer(args.tokenizer_dir), f"loaded from {args.tokenizer_dir or 'tokenizer/'}"
    t0 = time.perf_counter()
    tok = Tokenizer.train_from_iterator(train_texts(args.data_dir, args.train_chars), vocab_size=args.vocab_size)
    return tok, f"trained (rustbpe) on {args.train_chars:,} chars in {time.perf_counter() - t0:.1f}s"


def bench_mode(tok, args, mode: str) -> dict:
    t0 = time.perf_counter()
    loader = build_pretrain_loader(
        tok, args.data_dir, "train", args.B, args.T, streams=1, mode=mode, process_index=0, process_count=1,
        **{k: getattr(args, k) for k in KNOBS},
    )
    next(loader)
    first = time.perf_counter() - t0
    for _ in range(args.warmup - 1):
        next(loader)
    t1, c1 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        next(loader)
    dt, cpu = time.perf_counter() - t1, time.process_time() - c1
    epoch = loader.get_state()["stream_states"]["0"]["epoch"]
    loader.close()
    gc.collect()
    return {"mode": mode, "first": first, "step_ms": 1e3 * dt / args.steps,
            "tok_s": args.steps * args.B * args.T / dt, "tok_cpu_s": args.steps * args.B * args.T / cpu,
            "epoch": epoch}


def bench_encode(tok, args) -> tuple[float, float]:
    texts = train_texts(args.data_dir, 4_000_000)
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for i in range(0, len(texts), args.tokenizer_batch_size):
        n += sum(map(len, tok.encode(texts[i:i + args.tokenizer_batch_size], prepend=tok.get_bos_token_id(),
                                     num_threads=args.tokenizer_threads)))
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_flags(p, data_dir="sample", tokenizer_dir=None)  # no --tokenizer_dir: train one on the data
    p.add_argument("--B", type=int, default=32)
    p.add_argument("--T", type=int, default=2048)
    p.add_argument("--steps", type=int, default=40, help="timed batches per mode")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first (≥ 1)")
    p.add_argument("--modes", nargs="+", default=["stream", "bestfit"], choices=["stream", "bestfit"])
    defaults = inspect.signature(build_pretrain_loader).parameters
    for knob in KNOBS:
        p.add_argument(f"--{knob}", type=int, default=defaults[knob].default)
    p.add_argument("--vocab_size", type=int, default=4096)
    p.add_argument("--train_chars", type=int, default=2_000_000)
    args = p.parse_args(argv)
    args.warmup = max(1, args.warmup)

    tok, how = get_tokenizer(args)
    print(f"data: {resolve_data_dir(args.data_dir)} | tokenizer: vocab {tok.get_vocab_size()}, {how}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"B={args.B} T={args.T} tokenizer_threads={args.tokenizer_threads} "
          f"tokenizer_batch_size={args.tokenizer_batch_size} prefetch={args.prefetch} buffer_size={args.buffer_size}")
    print()
    print(f"| {'mode':8} | {'first batch (s)':>15} | {'ms/batch':>9} | {'tokens/s':>11} | {'tokens/CPU-s':>12} | {'epochs done':>11} |")
    print(f"|{'-' * 10}|{'-' * 16}:|{'-' * 10}:|{'-' * 12}:|{'-' * 13}:|{'-' * 12}:|")
    for mode in args.modes:
        r = bench_mode(tok, args, mode)
        print(f"| {mode:8} | {r['first']:15.2f} | {r['step_ms']:9.1f} | {r['tok_s']:11,.0f} | {r['tok_cpu_s']:12,.0f} "
              f"| {r['epoch']:11d} |", flush=True)
    wall, cpu = bench_encode(tok, args)
    print(f"| {'encode':8} | {'':>15} | {'':>9} | {wall:11,.0f} | {cpu:12,.0f} | {'':>11} |")
    print("\ntokens/s = wall-clock rate seen by a consumer that does nothing else; tokens/CPU-s counts the CPU time of "
          "all the process's threads (less sensitive to other load on the machine); encode = Tokenizer.encode alone.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
