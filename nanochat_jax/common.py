"""Small shared utilities: where files live, process-0 printing, atomic writes, JSON-safe metadata.

Kept dependency-free (no jax import at module level) so the tokenizer and data
tools can use it without paying JAX's import time.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

BASE_DIR_ENV = "NANOCHAT_JAX_BASE_DIR"
# Each stage's checkpoint folder under the base dir (nanochat's names); here so jax-free tools (the pipeline) can read it.
STAGE_DIRS = {"base": "base_checkpoints", "mid": "mid_checkpoints", "sft": "chatsft_checkpoints", "rl": "chatrl_checkpoints"}
STAGE_MODULES = {"base": "train.pretrain", "mid": "train.mid", "sft": "train.sft", "rl": "train.rl"}  # what trains each


def get_base_dir() -> Path:
    """Root of every artifact (data, tokenizer, checkpoints), created on demand.

    `$NANOCHAT_JAX_BASE_DIR`, else `~/.cache/nanochat_jax` (nanochat uses
    `NANOCHAT_BASE_DIR` / `~/.cache/nanochat`; a separate name keeps the two
    projects' caches from clobbering each other).
    """
    base = Path(os.environ.get(BASE_DIR_ENV) or Path.home() / ".cache" / "nanochat_jax")
    base.mkdir(parents=True, exist_ok=True)
    return base


def process_index() -> int:
    """JAX process index without importing jax when it is not loaded yet."""
    import sys

    if "jax" in sys.modules:
        return sys.modules["jax"].process_index()
    return 0


def print0(*args, **kwargs) -> None:
    """print() on process 0 only, so multi-host runs log once."""
    if process_index() == 0:
        print(*args, **kwargs, flush=True)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Open a temp file beside `path`; rename it over `path` only on success.

    A crash or exception mid-write leaves the old file (or nothing) in place,
    never a truncated file that looks valid.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; finished files follow the umask like open() does
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def json_safe(obj):
    """Metadata as plain JSON: numpy / jax scalars and arrays become numbers and lists, keys strings."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj.tolist() if hasattr(obj, "tolist") else obj
