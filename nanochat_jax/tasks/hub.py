"""Where a task's rows come from: a local file, a local directory, or the HF hub.

nanochat calls ``datasets.load_dataset(repo, subset, split=...).shuffle(seed=42)``.
Here the hub's parquet export (the ``refs/convert/parquet`` branch, one layout
for every dataset) is fetched with ``huggingface_hub`` and read with pyarrow:
no ``datasets`` dependency, whose stack is large and which adds nothing once
the files are local. The order is the same: ``Dataset.shuffle(seed=42)`` is
``numpy.random.default_rng(42).permutation(n)``.

Resolution, first match wins: ``path=`` (one file), ``data_dir=`` or
``$NANOCHAT_JAX_TASK_DIR`` (a directory laid out as
``<dir>/<name>/<subset>/<split>.{jsonl,jsonl.gz,parquet}``; ``"embedded"`` is
the one shipped in ``nanochat_jax/data/chat``), else a download into
``$NANOCHAT_JAX_BASE_DIR/task_data``. A file named ``<split>.shuffled.*`` is
already in nanochat's order (a slice of the shuffled split) and is not
shuffled again.
"""

from __future__ import annotations

import bisect
import gzip
import json
import os
from pathlib import Path

import numpy as np

from nanochat_jax.common import get_base_dir, print0
from nanochat_jax.tasks.common import Task

TASK_DIR_ENV = "NANOCHAT_JAX_TASK_DIR"
EMBEDDED = "embedded"
EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "data" / "chat"
PARQUET_REVISION = "refs/convert/parquet"
SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
PRESHUFFLED = ".shuffled"
SHUFFLE_SEED = 42


class TaskDataError(ValueError):
    """A task's data cannot be found, downloaded or parsed; the message says where and what to do."""


def embedded_path(name: str) -> Path:
    """A file of the embedded chat data, e.g. ``embedded_path("identity_conversations.jsonl.gz")``."""
    path = EMBEDDED_DIR / name
    if not path.is_file():
        raise TaskDataError(f"no embedded chat data file {name!r} in {EMBEDDED_DIR}")
    return path


def local_split_file(root: str | os.PathLike, name: str, subset: str, split: str) -> Path:
    """The one file of ``<root>/<name>/<subset>/<split>[.shuffled].{jsonl,jsonl.gz,parquet}``."""
    folder = (EMBEDDED_DIR if str(root) == EMBEDDED else Path(root).expanduser()) / name / subset
    candidates = [folder / f"{split}{tag}{suffix}" for tag in ("", PRESHUFFLED) for suffix in SUFFIXES]
    found = [p for p in candidates if p.is_file()]
    if len(found) != 1:
        wanted = ", ".join(p.name for p in candidates[: len(SUFFIXES)])
        raise TaskDataError(f"{name} {subset}/{split}: expected exactly one of {wanted} (or {split}.shuffled.*) in {folder}, found {[p.name for p in found] or 'none'}")
    return found[0]


def download(repo: str, subset: str, split: str, hint: str) -> list[Path]:
    """The parquet files of one split, fetched (with a progress bar) into the task cache."""
    from huggingface_hub import snapshot_download

    cache = get_base_dir() / "task_data"
    print0(f"Fetching {repo} {subset}/{split} from the Hugging Face hub (cache: {cache})")
    try:
        root = snapshot_download(
            repo, repo_type="dataset", revision=PARQUET_REVISION, allow_patterns=f"{subset}/{split}/*.parquet",
            cache_dir=cache, endpoint=os.environ.get("HF_ENDPOINT"),
        )
    except Exception as e:  # no network, unknown repo, auth, disk: all end the same way for the user
        raise TaskDataError(f"could not download dataset {repo} (subset {subset!r}, split {split!r}) from the Hugging Face hub: {type(e).__name__}: {e}\n{hint}") from e
    files = sorted(Path(root, subset, split).glob("*.parquet"))
    if not files:
        raise TaskDataError(f"dataset {repo} has no parquet files for subset {subset!r}, split {split!r}\n{hint}")
    return files


def read_rows(files: list[Path]):
    """Rows of one .jsonl / .jsonl.gz file or of parquet files, and ``where(i)`` naming row i's file and line."""
    if all(f.name.endswith(".parquet") for f in files):
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for f in files:
            try:
                tables.append(pq.read_table(f))
            except (OSError, pa.ArrowException) as e:
                raise TaskDataError(f"{f}: not a readable parquet file: {e}") from e
        starts = np.cumsum([0] + [t.num_rows for t in tables[:-1]]).tolist()

        def where(i: int) -> str:
            k = bisect.bisect_right(starts, i) - 1
            return f"{files[k]} row {i - starts[k] + 1}"

        return (pa.concat_tables(tables) if len(tables) > 1 else tables[0]), where
    if len(files) != 1 or not files[0].name.endswith((".jsonl", ".jsonl.gz")):
        raise TaskDataError(f"{[str(f) for f in files]}: expected one .jsonl / .jsonl.gz file or parquet files")
    path = files[0]
    rows, lines = [], []
    with (gzip.open if path.name.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise TaskDataError(f"{path}:{number}: not valid JSON: {e}") from e
                lines.append(number)
    return rows, lambda i: f"{path}:{lines[i]}"


def iter_rows(rows):
    """Every row as a dict, lists and parquet tables alike (tables batch by batch)."""
    if isinstance(rows, list):
        yield from rows
    else:
        for batch in rows.to_batches():
            yield from batch.to_pylist()


def row_at(rows, i: int) -> dict:
    return rows[i] if isinstance(rows, list) else rows.slice(i, 1).to_pylist()[0]


class DatasetTask(Task):
    """One split of an HF dataset; a subclass names it and renders a row with ``conversation(row)``.

    Every row is rendered once at load, so a malformed row fails here with
    its file and line rather than mid-training.
    """

    repo: str  # the HF dataset id
    name: str  # its directory under a task dir
    fields: dict[str, type] = {}  # required columns and their types

    def __init__(self, subset: str, split: str, *, path: str | os.PathLike | None = None,
                 data_dir: str | os.PathLike | None = None, **kwargs):
        super().__init__(**kwargs)
        self.subset, self.split = subset, split
        if path is not None:
            files = [Path(path).expanduser()]
            if not files[0].is_file():
                raise TaskDataError(f"{files[0]}: no such file for {self.name} {subset}/{split}")
        elif data_dir or os.environ.get(TASK_DIR_ENV):  # "" means unset, as in configs
            files = [local_split_file(data_dir or os.environ[TASK_DIR_ENV], self.name, subset, split)]
        else:
            files = download(self.repo, subset, split, self.hint())
        self.source = ", ".join(map(str, files))
        self.embedded = all(EMBEDDED_DIR in f.resolve().parents for f in files)  # a shipped slice: label its scores so
        self.rows, where = read_rows(files)
        count = 0
        for count, row in enumerate(iter_rows(self.rows), 1):
            try:
                self.conversation(self.prepare(row))
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
                raise TaskDataError(f"{where(count - 1)}: malformed {self.name} {subset}/{split} row: {e}") from e
        if count == 0:
            raise TaskDataError(f"{files[0]}: no rows for {self.name} {subset}/{split}")
        preshuffled = len(files) == 1 and f"{PRESHUFFLED}." in files[0].name
        self.order = np.arange(count) if preshuffled else np.random.default_rng(SHUFFLE_SEED).permutation(count)

    def hint(self) -> str:
        split = f"{self.subset}/{self.split}"
        return (f"For an offline run pass path= a local copy of {split} in the dataset's own HF schema (.jsonl, .jsonl.gz or .parquet), "
                f"e.g. {type(self).__name__}(..., path=\"{self.split}.jsonl\"), or set ${TASK_DIR_ENV} (or data_dir=) to a directory "
                f"holding {self.name}/{split}.jsonl; see the README section 'Chat data (tasks)'.")

    def prepare(self, row) -> dict:
        """Check the row is a dict with the required fields (subclasses may unwrap it first)."""
        if not isinstance(row, dict):
            raise TypeError(f"a row must be a JSON object, got {type(row).__name__}")
        bad = [k for k, t in self.fields.items() if not isinstance(row.get(k), t)]
        if bad:
            raise ValueError(f"fields {bad} missing or of the wrong type (want {', '.join(f'{k}: {t.__name__}' for k, t in self.fields.items())})")
        return row

    def conversation(self, row: dict) -> dict:
        raise NotImplementedError

    def num_examples(self) -> int:
        return len(self.order)

    def get_example(self, index: int) -> dict:
        return self.conversation(self.prepare(row_at(self.rows, int(self.order[index]))))
