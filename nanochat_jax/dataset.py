"""Pretraining shards: where they live, how to fetch them, how to check them.

nanochat (classic) pretrains on FineWeb-Edu re-packed by Karpathy into 1,823
parquet shards (``karpathy/fineweb-edu-100b-shuffle``, ~100 MB each, a single
``text`` column, row groups of 1,024 documents). This module mirrors
``nanochat/dataset.py``:

- the shards live in ``get_base_dir()/"base_data"``;
- ``train`` = every local shard except the last (sorted), ``val`` = the last;
- ``python -m nanochat_jax.dataset -n 8`` downloads shards 0..7.

Besides FineWeb-Edu there is a small embedded corpus (Shakespeare + the King
James Bible, see ``nanochat_jax/data/sample/PROVENANCE.md``) so that tests,
CI and CPU smoke runs work offline: pass ``data_dir="sample"``.

Downloads are written to ``<name>.tmp`` beside the shard, checked (the parquet
footer must parse and hold a ``text`` column) and only then renamed into
place, so a shard that exists is always complete. The standard library's
``urllib`` does the HTTP (no ``requests`` dependency); a thread pool gives the
parallelism (the work is network-bound, so threads are enough).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable, Iterable

from nanochat_jax.common import get_base_dir
from nanochat_jax.errors import NanochatError

BASE_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
NUM_SHARDS = 1823  # shard_00000 .. shard_01822
TEXT_COLUMN = "text"
SAMPLE_SPEC = "sample"
DOWNLOAD_HINT = (
    "Download FineWeb-Edu shards with `python -m nanochat_jax.dataset -n 8` "
    "(8 shards, ~800 MB; the last local shard is the validation split), "
    'or use the embedded offline sample corpus with data_dir="sample" '
    "(nanochat_jax.dataset.sample_data_dir())."
)


class DataNotFoundError(FileNotFoundError):
    """No parquet shards where the loader was told to look."""


class CorruptShardError(ValueError):
    """A parquet shard that cannot be read (truncated, garbage, wrong schema).

    ``path`` names the offending file so the user can delete or re-download it.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        super().__init__(
            f"corrupt or truncated parquet shard {self.path}: {reason}. Delete it and "
            "re-download it (`python -m nanochat_jax.dataset -n N` replaces invalid shards)."
        )


class DownloadError(NanochatError, RuntimeError):
    """A file (a shard, the eval bundle) could not be downloaded after every retry."""


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def sample_data_dir() -> Path:
    """The embedded sample corpus shipped inside the package (offline, a few MB)."""
    return Path(__file__).resolve().parent / "data" / "sample"


def default_data_dir() -> Path:
    """``get_base_dir()/"base_data"``, nanochat's location for FineWeb-Edu shards."""
    return get_base_dir() / "base_data"


def resolve_data_dir(spec: str | os.PathLike | None) -> Path:
    """Map a config value to a directory.

    ``"sample"`` → the embedded sample corpus; ``None`` / ``""`` → the default
    FineWeb-Edu directory; anything else is taken as a path (``~`` expanded).
    """
    if spec is None or str(spec) == "":
        return default_data_dir()
    if str(spec) == SAMPLE_SPEC:
        return sample_data_dir()
    return Path(spec).expanduser()


def list_parquet_files(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Sorted ``*.parquet`` files of ``data_dir`` (resolved by ``resolve_data_dir``).

    Raises ``DataNotFoundError`` with download instructions when there are none,
    rather than letting a loader spin forever on an empty list.
    """
    directory = resolve_data_dir(data_dir)
    files = sorted(p for p in directory.glob("*.parquet") if p.is_file()) if directory.is_dir() else []
    if not files:
        raise DataNotFoundError(f"no parquet shards found in {directory}. {DOWNLOAD_HINT}")
    return files


def split_files(files: list[Path], split: str) -> list[Path]:
    """nanochat's split rule: val = the last shard, train = all the others."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if split == "val":
        return files[-1:]
    if len(files) < 2:
        raise DataNotFoundError(
            f"only {len(files)} parquet shard in {files[0].parent if files else '?'}: the last shard is "
            f"reserved for validation, so training needs at least 2. {DOWNLOAD_HINT}"
        )
    return files[:-1]


def parquet_files_for_split(split: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    return split_files(list_parquet_files(data_dir), split)


def validate_shard(path: str | os.PathLike):
    """Check a shard's footer and schema; return its ``pyarrow`` FileMetaData.

    Reads only the footer (cheap even for 100 MB shards), so it catches
    truncation and garbage, not corruption inside data pages (the loader
    reports those, naming the file, when it reads the row group).
    """
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for bad files
        raise CorruptShardError(path, str(e)) from e
    names = pf.schema_arrow.names
    if TEXT_COLUMN not in names:
        raise CorruptShardError(path, f"no {TEXT_COLUMN!r} column (columns: {names})")
    return pf.metadata


def is_valid_shard(path: str | os.PathLike) -> bool:
    try:
        validate_shard(path)
    except (CorruptShardError, FileNotFoundError):
        return False
    return True


def _tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _retryable(err: BaseException) -> bool:
    """Client errors other than timeouts/rate limits will not fix themselves."""
    if isinstance(err, urllib.error.HTTPError):
        return err.code >= 500 or err.code in (408, 429)
    return True


def download_shard(index: int, data_dir: str | os.PathLike | None = None, *, base_url: str = BASE_URL,
                   log: Callable[[str], None] = print, **download_kwargs) -> tuple[Path, int, float, bool]:
    """Fetch one shard unless a valid copy exists (``download_url`` with its retry keywords, parquet footer checked).

    Returns ``(path, bytes, seconds, downloaded)``.
    """
    directory = resolve_data_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / shard_name(index)
    if path.exists():
        if is_valid_shard(path):
            return path, path.stat().st_size, 0.0, False
        log(f"{path.name}: existing file is not a valid shard; re-downloading")
    url = f"{base_url.rstrip('/')}/{shard_name(index)}"
    nbytes, seconds = download_url(url, path, validate=validate_shard, log=log, **download_kwargs)
    return path, nbytes, seconds, True


def _progress(name: str, done: int, total: int | None, t0: float) -> None:
    """A one-line progress bar on stderr, redrawn in place."""
    rate = done / 1e6 / max(time.monotonic() - t0, 1e-9)
    if total:
        bar = "#" * (30 * done // total)
        line = f"\r{name} [{bar:<30}] {done / 1e6:8.1f}/{total / 1e6:.1f} MB {rate:6.1f} MB/s"
    else:
        line = f"\r{name} {done / 1e6:8.1f} MB {rate:6.1f} MB/s"
    print(line, end="\n" if total and done >= total else "", file=sys.stderr, flush=True)


def _fetch_once(url: str, tmp: Path, *, resume: bool, progress: bool, timeout_s: float, chunk_bytes: int) -> int:
    """One HTTP GET into ``tmp`` (continuing it with a Range request when ``resume``); returns its final size."""
    have = tmp.stat().st_size if resume and tmp.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    t0 = time.monotonic()
    with urllib.request.urlopen(request, timeout=timeout_s) as resp:
        if have and resp.status != 206:  # the server ignored the range: start over
            have = 0
        length = resp.headers.get("Content-Length")
        expected = None if length is None else have + int(length)
        nbytes = have
        with open(tmp, "ab" if have else "wb") as f:
            while chunk := resp.read(chunk_bytes):
                f.write(chunk)
                nbytes += len(chunk)
                if progress:
                    _progress(tmp.name.removesuffix(".tmp"), nbytes, expected, t0)
            f.flush()
            os.fsync(f.fileno())
    if expected is not None and nbytes != expected:
        raise OSError(f"connection closed after {nbytes} of {expected} bytes")
    return nbytes


def download_url(
    url: str,
    path: Path,
    *,
    validate: Callable[[Path], object] | None = None,
    resume: bool = False,
    progress: bool = False,
    attempts: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    chunk_bytes: int = 1 << 20,
    log: Callable[[str], None] = print,
) -> tuple[int, float]:
    """Fetch ``url`` into ``path`` atomically; returns ``(bytes, seconds)``.

    Streams into ``<name>.tmp``, checks the byte count against Content-Length
    and ``validate(tmp)`` (which raises on a bad file), then renames into place.
    Without ``resume`` any failure removes the ``.tmp``; with it, a connection
    failure keeps the partial ``.tmp`` and the next attempt (or the next run)
    continues it with an HTTP Range request. Retries with exponential backoff
    (``backoff_s * 2**(attempt-1)``: 2, 4, 8, 16 s by default, as nanochat).
    """
    if attempts < 1:
        raise ValueError(f"attempts must be ≥ 1, got {attempts}")
    tmp = _tmp_path(path)
    last_err: BaseException | None = None
    t0 = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            nbytes = _fetch_once(url, tmp, resume=resume, progress=progress, timeout_s=timeout_s, chunk_bytes=chunk_bytes)
            if validate is not None:
                try:
                    validate(tmp)
                except BaseException:
                    tmp.unlink(missing_ok=True)  # a complete but bad file: never resume from it
                    raise
            os.replace(tmp, path)
            return nbytes, time.monotonic() - t0
        except BaseException as e:
            if not resume:
                tmp.unlink(missing_ok=True)
            if not isinstance(e, Exception):  # KeyboardInterrupt etc.: clean up, then stop
                raise
            last_err = e
            if attempt == attempts or not _retryable(e):
                break
            wait = backoff_s * 2 ** (attempt - 1)
            log(f"{path.name}: attempt {attempt}/{attempts} failed ({e}); retrying in {wait:g}s")
            time.sleep(wait)
    raise DownloadError(f"could not download {url} after {attempt} attempt(s): {last_err}") from last_err


def download_shards(
    indices: Iterable[int],
    data_dir: str | os.PathLike | None = None,
    *,
    workers: int = 4,
    base_url: str = BASE_URL,
    attempts: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Download several shards in parallel, one progress line per finished shard.

    Leftover ``.tmp`` files of the requested shards (from a killed run) are
    removed first. Every shard is attempted even if some fail; failures are
    then reported together in one ``DownloadError``.
    """
    indices = list(indices)
    for i in indices:
        if not 0 <= i < NUM_SHARDS and base_url == BASE_URL:
            raise ValueError(f"shard index {i} out of range: FineWeb-Edu has shards 0..{NUM_SHARDS - 1}")
    directory = resolve_data_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    for i in indices:
        _tmp_path(directory / shard_name(i)).unlink(missing_ok=True)

    lock = threading.Lock()
    done = [0]
    total = len(indices)
    paths: dict[int, Path] = {}
    failures: dict[int, BaseException] = {}
    t_start = time.monotonic()

    def one(i: int):
        return download_shard(i, directory, base_url=base_url, attempts=attempts,
                              backoff_s=backoff_s, timeout_s=timeout_s, log=log)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(one, i): i for i in indices}
        for fut in as_completed(futures):
            i = futures[fut]
            with lock:
                done[0] += 1
                prefix = f"[{done[0]:>{len(str(total))}}/{total}] {shard_name(i)}"
                try:
                    path, nbytes, secs, fetched = fut.result()
                except Exception as e:
                    failures[i] = e
                    log(f"{prefix}  FAILED: {e}")
                    continue
                paths[i] = path
                mb = nbytes / 1e6
                if fetched:
                    log(f"{prefix}  {mb:8.1f} MB  {mb / max(secs, 1e-9):7.1f} MB/s")
                else:
                    log(f"{prefix}  {mb:8.1f} MB  already present")
    if failures:
        names = ", ".join(shard_name(i) for i in sorted(failures))
        raise DownloadError(f"{len(failures)} of {total} shards failed ({names}); re-run to retry them")
    log(f"done: {total} shards in {directory} ({time.monotonic() - t_start:.1f}s)")
    return [paths[i] for i in indices]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download FineWeb-Edu pretraining shards (nanochat's data).")
    parser.add_argument("-n", "--num-files", type=int, default=-1,
                        help=f"download shards 0..N-1 (default -1 = all {NUM_SHARDS})")
    parser.add_argument("-w", "--num-workers", type=int, default=4, help="parallel downloads")
    parser.add_argument("--data-dir", default=None, help="target directory (default: <base_dir>/base_data)")
    parser.add_argument("--base-url", default=BASE_URL, help="where shard_XXXXX.parquet files are served")
    args = parser.parse_args(argv)
    n = NUM_SHARDS if args.num_files < 0 else min(args.num_files, NUM_SHARDS)
    directory = resolve_data_dir(args.data_dir)
    print(f"downloading {n} shards to {directory} with {args.num_workers} workers", flush=True)
    try:
        download_shards(range(n), directory, workers=args.num_workers, base_url=args.base_url,
                        log=lambda s: print(s, flush=True))
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
