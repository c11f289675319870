"""Train the BPE tokenizer on the pretraining shards (nanochat's `scripts/tok_train.py`).

    python -m train.tokenizer --config=configs/d20.py [--config.data.tokenizer_max_chars=N ...]
    python -m train.tokenizer [--max_chars N] [--doc_cap 10000] [--vocab_size 65536]
                              [--data_dir DIR] [--out DIR]

With ``--config`` the tokenizer a pretraining config needs is trained: its
``data`` section's ``data_dir``, ``tokenizer_dir``, ``tokenizer_vocab_size``,
``tokenizer_max_chars`` and ``tokenizer_doc_cap``. Without it, the
flags are nanochat's ``tok_train`` flags.

The last parquet file (sorted by name) is the validation split, as in
nanochat, so it is never used for training; its first ~2 MB measure the
tokenizer's compression (UTF-8 bytes per token) after training.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterator

from nanochat_jax.common import print0
from nanochat_jax.config import parse_args
from nanochat_jax.parquet_docs import iter_documents
from nanochat_jax.dataset import list_parquet_files, split_files
from nanochat_jax.tokenizer import Tokenizer, tokenizer_dir

DEFAULT_MAX_CHARS = 10_000_000_000  # nanochat's default; the speedrun passes 2B
DEFAULT_DOC_CAP = 10_000
DEFAULT_VOCAB_SIZE = 65_536
DEFAULT_VAL_BYTES = 2_000_000


def iter_train_texts(train_files: list[Path], max_chars: int, doc_cap: int) -> Iterator[str]:
    """The first `max_chars` characters of the training documents, each capped at `doc_cap`.

    Capping stops a few huge documents from dominating the pair counts. The
    last document is cut so the total is exactly `max_chars` (nanochat lets
    it overshoot by up to one document; the difference is immaterial).
    """
    if max_chars <= 0 or doc_cap <= 0:
        raise ValueError(f"max_chars and doc_cap must be positive, got {max_chars} and {doc_cap}")
    remaining = max_chars
    for doc in iter_documents(train_files):
        doc = doc[: min(doc_cap, remaining)]
        remaining -= len(doc)
        yield doc
        if remaining <= 0:
            return


def read_val_texts(val_file: Path, max_bytes: int = DEFAULT_VAL_BYTES) -> list[str]:
    """Whole validation documents from the start of `val_file`, about `max_bytes` UTF-8 bytes."""
    docs, total = [], 0
    for doc in iter_documents([val_file]):
        docs.append(doc)
        total += len(doc.encode("utf-8"))
        if total >= max_bytes:
            break
    return docs


def compression_ratio(tok: Tokenizer, docs: list[str]) -> tuple[int, int, float]:
    """(bytes, tokens, bytes per token) of `docs` under `tok`; higher ratio = better compression."""
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    n_tokens = sum(len(ids) for ids in tok.encode(docs))
    return n_bytes, n_tokens, (n_bytes / n_tokens if n_tokens else float("nan"))


def train_tokenizer(
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    max_chars: int = DEFAULT_MAX_CHARS,
    doc_cap: int = DEFAULT_DOC_CAP,
    val_bytes: int = DEFAULT_VAL_BYTES,
) -> tuple[Tokenizer, dict]:
    """Train on the train shards of `data_dir`, save to `out_dir`, measure on the val shard.

    ``data_dir`` as in configs: a path, ``"sample"`` (embedded corpus) or
    None/"" for the downloaded FineWeb-Edu shards.

    Returns the tokenizer and a stats dict (train_time_s, train_chars,
    train_docs, vocab_size, val_bytes, val_tokens, bytes_per_token, out_dir)
    so the pretraining driver can train a small tokenizer on demand.
    """
    out_dir = Path(out_dir) if out_dir is not None else tokenizer_dir()
    files = list_parquet_files(data_dir)
    train_files, (val_file,) = split_files(files, "train"), split_files(files, "val")

    counted = {"chars": 0, "docs": 0}

    def counting(it: Iterator[str]) -> Iterator[str]:
        for doc in it:
            counted["chars"] += len(doc)
            counted["docs"] += 1
            yield doc

    t0 = time.perf_counter()
    tok = Tokenizer.train_from_iterator(counting(iter_train_texts(train_files, max_chars, doc_cap)), vocab_size)
    train_time = time.perf_counter() - t0
    tok.save(out_dir)

    n_bytes, n_tokens, ratio = compression_ratio(tok, read_val_texts(val_file, val_bytes))
    stats = {
        "train_time_s": train_time,
        "train_chars": counted["chars"],
        "train_docs": counted["docs"],
        "train_files": len(train_files),
        "vocab_size": tok.get_vocab_size(),
        "val_file": str(val_file),
        "val_bytes": n_bytes,
        "val_tokens": n_tokens,
        "bytes_per_token": ratio,
        "out_dir": str(out_dir),
    }
    return tok, stats


def train_from_config(cfg) -> tuple[Tokenizer, dict]:
    """The tokenizer a pretraining config asks for, trained on that config's data."""
    d = cfg.data
    return train_tokenizer(d.data_dir, tokenizer_dir(d.tokenizer_dir), d.tokenizer_vocab_size, d.tokenizer_max_chars, d.tokenizer_doc_cap)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if any(a.startswith("--config") for a in argv):
            _, stats = train_from_config(parse_args(argv))
        else:
            parser = argparse.ArgumentParser(
                description="Train a BPE tokenizer on the pretraining parquet shards. "
                "Or: --config=configs/X.py [--config.data.field=value ...] trains the tokenizer that config needs."
            )
            parser.add_argument("--max_chars", type=int, default=DEFAULT_MAX_CHARS, help="train on the first N characters (default 10B)")
            parser.add_argument("--doc_cap", type=int, default=DEFAULT_DOC_CAP, help="cap each document at this many characters")
            parser.add_argument("--vocab_size", type=int, default=DEFAULT_VOCAB_SIZE, help="vocabulary size including the 9 special tokens")
            parser.add_argument("--data_dir", type=str, default=None, help='directory of *.parquet shards, or "sample" for the embedded corpus (default <base dir>/base_data)')
            parser.add_argument("--out", type=str, default=None, help="output directory (default <base dir>/tokenizer)")
            parser.add_argument("--val_bytes", type=int, default=DEFAULT_VAL_BYTES, help="validation bytes used to measure compression")
            args = parser.parse_args(argv)
            _, stats = train_tokenizer(args.data_dir, args.out, args.vocab_size, args.max_chars, args.doc_cap, args.val_bytes)
    except (FileNotFoundError, ValueError) as e:  # missing data, bad config or shard: a message, not a traceback
        raise SystemExit(f"error: {e}") from None
    print0(f"trained vocab {stats['vocab_size']:,} on {stats['train_chars']:,} chars ({stats['train_docs']:,} docs) in {stats['train_time_s']:.2f} s")
    print0(f"saved to {stats['out_dir']}")
    print0(
        f"compression on {Path(stats['val_file']).name}: {stats['val_bytes']:,} bytes -> {stats['val_tokens']:,} tokens "
        f"= {stats['bytes_per_token']:.3f} bytes/token"
    )
    return stats


if __name__ == "__main__":
    from nanochat_jax import cli

    cli.main(main)
