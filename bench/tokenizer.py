"""Benchmark tokenizer training (rustbpe) and encoding (tiktoken) on parquet shards.

    python -m bench.tokenizer [--data_dir DIR] [--vocab_size 65536] [--max_chars 100000000]
                              [--doc_cap 10000] [--encode_mb 16] [--num_threads 8] [--batch_size 128]

Training reads `--max_chars` characters from every `*.parquet` file in
`--data_dir` (`text` column), each document capped at `--doc_cap`, the same
way `train.tokenizer` does. When the directory holds fewer characters the
documents are repeated cyclically and the output says so: repeated text costs
the same regex splitting but adds no new distinct words, so merge selection
is cheaper than on fresh text and the number is a lower bound on real cost.

Encoding throughput uses `Tokenizer.encode(list_of_docs)` (tiktoken's
`encode_ordinary_batch`) in batches of `--batch_size` documents, as the
pretraining dataloader does, plus a single-threaded `encode_ordinary` loop
for comparison.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Iterator

from bench.common import add_data_flags, load_tokenizer
from nanochat_jax.dataset import DataNotFoundError, list_parquet_files
from nanochat_jax.parquet_docs import iter_documents
from nanochat_jax.tokenizer import Tokenizer


class CyclicText:
    """Yields capped documents until `max_chars` characters, cycling the files if needed.

    Records how many characters one full pass holds and how many passes were
    started, so the report can say whether text was repeated.
    """

    def __init__(self, files: list[Path], max_chars: int, doc_cap: int):
        self.files, self.max_chars, self.doc_cap = files, max_chars, doc_cap
        self.chars = 0
        self.docs = 0
        self.passes = 0
        self.chars_per_pass: int | None = None

    def __iter__(self) -> Iterator[str]:
        remaining = self.max_chars
        while remaining > 0:
            self.passes += 1
            yielded_this_pass = 0
            for doc in iter_documents(self.files):
                doc = doc[: min(self.doc_cap, remaining)]
                remaining -= len(doc)
                yielded_this_pass += len(doc)
                self.chars += len(doc)
                self.docs += 1
                yield doc
                if remaining <= 0:
                    return
            if self.chars_per_pass is None:
                self.chars_per_pass = yielded_this_pass
            if yielded_this_pass == 0:
                raise ValueError(f"no text found in {[str(f) for f in self.files]}")


def take_bytes(files: list[Path], n_bytes: int) -> tuple[list[str], bool]:
    """Whole documents totalling >= n_bytes of UTF-8 (cycling if needed), and whether it cycled."""
    docs, total, cycled = [], 0, False
    while total < n_bytes:
        before = total
        for doc in iter_documents(files):
            docs.append(doc)
            total += len(doc.encode("utf-8"))
            if total >= n_bytes:
                break
        if total == before:
            raise ValueError("no text to encode")
        if total < n_bytes:
            cycled = True
    return docs, cycled


def row(name: str, value: str) -> None:
    print(f"| {name:<38} | {value:>28} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_flags(p, data_dir="")  # --tokenizer_dir: with --skip_train, the tokenizer to load
    p.add_argument("--vocab_size", type=int, default=65_536)
    p.add_argument("--max_chars", type=int, default=100_000_000, help="characters to train on")
    p.add_argument("--doc_cap", type=int, default=10_000)
    p.add_argument("--encode_mb", type=float, default=16.0, help="MB of text for the encode benchmark")
    p.add_argument("--num_threads", type=int, default=8, help="tiktoken batch-encode threads")
    p.add_argument("--batch_size", type=int, default=128, help="documents per encode batch")
    p.add_argument("--skip_train", action="store_true", help="only benchmark encoding, with the --tokenizer_dir tokenizer")
    args = p.parse_args(argv)

    try:
        files = list_parquet_files(args.data_dir)
    except DataNotFoundError as e:
        sys.exit(str(e))

    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {len(files)} parquet file(s) in {files[0].parent}")
    print(f"| {'metric':<38} | {'value':>28} |")
    print(f"|{'-' * 40}|{'-' * 30}|")

    if args.skip_train:
        tok = load_tokenizer(args.tokenizer_dir)
        row("tokenizer", args.tokenizer_dir or "tokenizer/")
    else:
        text = CyclicText(files, args.max_chars, args.doc_cap)
        t0 = time.perf_counter()
        with warnings.catch_warnings():  # a smaller achieved vocab is shown in the table instead
            warnings.simplefilter("ignore", UserWarning)
            tok = Tokenizer.train_from_iterator(text, args.vocab_size)
        dt = time.perf_counter() - t0
        repeated = text.passes > 1
        short = " (text ran out of merges)" if tok.get_vocab_size() < args.vocab_size else ""
        row("requested vocab / achieved", f"{args.vocab_size:,} / {tok.get_vocab_size():,}{short}")
        row("training chars (doc_cap)", f"{text.chars:,} ({args.doc_cap:,})")
        row("training docs", f"{text.docs:,}")
        if repeated:
            row("distinct chars available (one pass)", f"{text.chars_per_pass:,}")
            row("text repeated cyclically", f"yes, {text.chars / text.chars_per_pass:.1f}x")
        else:
            row("text repeated cyclically", "no")
        row("train time (s)", f"{dt:.2f}")
        row("train throughput (M chars/s)", f"{text.chars / dt / 1e6:.2f}")

    docs, cycled = take_bytes(files, int(args.encode_mb * 1e6))
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    # warm-up (thread pool start, regex compile)
    tok.encode(docs[: args.batch_size], num_threads=args.num_threads)
    t0 = time.perf_counter()
    n_tokens = 0
    for i in range(0, len(docs), args.batch_size):
        n_tokens += sum(map(len, tok.encode(docs[i : i + args.batch_size], num_threads=args.num_threads)))
    dt_batch = time.perf_counter() - t0

    single = docs[: max(1, len(docs) // 4)]
    single_bytes = sum(len(d.encode("utf-8")) for d in single)
    t0 = time.perf_counter()
    single_tokens = sum(len(tok.encode(d)) for d in single)
    dt_single = time.perf_counter() - t0

    row("encode text (MB, docs)", f"{n_bytes / 1e6:.1f} MB, {len(docs):,} docs" + (" (cycled)" if cycled else ""))
    row(f"batch encode MB/s ({args.num_threads} thr, bs {args.batch_size})", f"{n_bytes / dt_batch / 1e6:.2f}")
    row(f"batch encode tokens/s ({args.num_threads} thr)", f"{n_tokens / dt_batch:,.0f}")
    row("single-thread encode MB/s", f"{single_bytes / dt_single / 1e6:.2f}")
    row("single-thread encode tokens/s", f"{single_tokens / dt_single:,.0f}")
    row("bytes per token (encode text)", f"{n_bytes / n_tokens:.3f}")


if __name__ == "__main__":
    main()
