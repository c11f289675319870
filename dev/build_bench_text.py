"""Build ~100M characters of distinct English text as parquet shards, for benchmarks only.

Why it exists: ``bench/tokenizer.py`` should time BPE training for vocab 65,536
on 100M characters, but FineWeb-Edu cannot be downloaded on machines whose only
network is package registries, and the embedded sample corpus (~9M characters)
would have to be repeated ~11x, which makes merge selection cheaper than on
fresh text (and runs out of merges before 65,536). This script assembles
distinct real English from Debian documentation packages instead:

- ``linux-doc-6.1``: the kernel's reStructuredText and plain-text documentation;
- ``python3.11-doc``: the Python documentation sources (``_sources/*.rst.txt``);
- ``perl-doc``: Perl's POD manuals;
- ``dict-gcide``: the Collaborative International Dictionary of English
  (Webster's 1913 + WordNet), and ``dict-wn``: WordNet's glosses;
- the project's embedded sample corpus (Shakespeare, King James Bible).

Files longer than ``--doc-chars`` are cut at line breaks, so that the
tokenizer trainer's per-document cap (10,000 characters) discards nothing.

Technical prose and dictionary entries are not web text; the result is a
stand-in for FineWeb-Edu's cost profile (regex splitting + merge counting on
text that does not repeat), not for its compression ratio. The text is not
committed anywhere (the packages are GPL/various licences); the shards are
written to ``--out`` in nanochat's schema, the last shard being validation.

    apt-get update && python dev/build_bench_text.py --out /tmp/bench_text
    python -m bench.tokenizer --data_dir /tmp/bench_text
"""

from __future__ import annotations

import argparse
import gzip
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_sample_corpus import REPO, write_shards  # noqa: E402

PACKAGES = ("linux-doc-6.1", "python3.11-doc", "perl-doc", "dict-gcide", "dict-wn")


def _read(path: Path) -> str:
    raw = gzip.decompress(path.read_bytes()) if path.suffix in (".gz", ".dz") else path.read_bytes()
    return raw.decode("utf-8", errors="replace")


def _chunks(text: str, size: int) -> list[str]:
    """Cut at line breaks into pieces of about ``size`` characters."""
    out, cur, n = [], [], 0
    for line in text.splitlines(keepends=True):
        cur.append(line)
        n += len(line)
        if n >= size:
            out.append("".join(cur))
            cur, n = [], 0
    out.append("".join(cur))
    return [d for d in out if d.strip()]


def documents(root: Path, doc_chars: int) -> list[str]:
    doc = root / "usr/share/doc"
    files = [p for p in sorted((doc / "linux-doc-6.1").rglob("*")) if p.name.endswith((".rst.gz", ".txt.gz"))]
    files += sorted((doc / "python3.11/html/_sources").rglob("*.rst.txt"))
    files += sorted(root.rglob("*.pod"))
    files += sorted((root / "usr/share/dictd").glob("*.dict.dz"))
    docs = [chunk for path in files for chunk in _chunks(_read(path), doc_chars)]
    for shard in sorted((REPO / "nanochat_jax/data/sample").glob("*.parquet")):
        docs += pq.read_table(shard, columns=["text"]).column("text").to_pylist()
    return [d for d in docs if d.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--doc-chars", type=int, default=4000, help="longer files are cut into documents of ~this size")
    parser.add_argument("--train-shards", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="nanochat_bench_text_") as tmp:
        work = Path(tmp)
        subprocess.run(["apt-get", "download", *PACKAGES], cwd=work, check=True)
        for deb in sorted(work.glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(work / "root")], check=True)
        docs = documents(work / "root", args.doc_chars)
    random.Random(args.seed).shuffle(docs)
    args.out.mkdir(parents=True, exist_ok=True)
    written = write_shards(docs, args.out, args.train_shards, val_fraction=0.02, rows_per_group=1024)
    print(f"{len(docs):,} documents, {sum(map(len, docs)):,} characters -> {len(written)} shards in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
