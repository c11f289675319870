"""Entry-point wrapper: the project's own errors become one clear line, not a traceback.

The project's own errors are :class:`nanochat_jax.errors.NanochatError` and
its subclasses (config, checkpoint, usage errors), plus ``ValueError`` /
``FileNotFoundError`` / ``RuntimeError`` raised by the project's own code (the
innermost frame is in this package, ``train/`` or ``configs/``): missing data,
bad tokenizer files, a diverged run. The same types raised inside a library
are bugs and keep their traceback. ``$NANOCHAT_JAX_DEBUG=1`` shows every
traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from nanochat_jax.errors import NanochatError

DEBUG_ENV = "NANOCHAT_JAX_DEBUG"
EXIT_USER_ERROR = 2
_ROOT = Path(__file__).resolve().parent.parent
PROJECT_DIRS = tuple(str(_ROOT / d) + os.sep for d in ("nanochat_jax", "train", "configs"))


def is_project_error(e: BaseException) -> bool:
    """Whether ``e`` is one the user can act on (see the module docstring)."""
    if isinstance(e, NanochatError):
        return True
    if not isinstance(e, (ValueError, FileNotFoundError, RuntimeError)):
        return False
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(PROJECT_DIRS)


def error_line(e: BaseException) -> str:
    """``error: <message>`` on one line (multi-line messages are joined)."""
    text = " ".join(part.strip() for part in str(e).splitlines() if part.strip()) or type(e).__name__
    return f"error: {text}"


def main(fn: Callable[[], object]) -> None:
    """Run ``fn``; a project error prints ``error: ...`` on stderr and exits 2 (``$NANOCHAT_JAX_DEBUG=1``: traceback).

    ``fn``'s return value is ignored; ``SystemExit`` with a message counts as a project error.
    """
    try:
        fn()
    except SystemExit as e:  # ``raise SystemExit("message")`` is a user error too; argparse exits 2 by itself
        if not isinstance(e.code, str):
            raise
        print(e.code if e.code.startswith("error:") else f"error: {e.code}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except Exception as e:
        if os.environ.get(DEBUG_ENV) or not is_project_error(e):
            raise
        print(error_line(e), file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
