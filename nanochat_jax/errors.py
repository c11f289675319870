"""The project's own errors: what a user can fix (a config, a path, a checkpoint, an argument).

Entry points run under :func:`nanochat_jax.cli.main`, which prints these as one
line and exits 2; everything else is a bug and keeps its traceback. Existing
classes (``config.ConfigError``, ``checkpoint.CheckpointNotFoundError`` ...)
derive from these so ``except ValueError`` / ``except FileNotFoundError`` in
callers keeps working.
"""

from __future__ import annotations


class NanochatError(Exception):
    """Base class: an error the user can act on, shown without a traceback."""


class UsageError(NanochatError, ValueError):
    """A bad command-line argument or argument combination."""


class CheckpointError(NanochatError):
    """A checkpoint that is missing or cannot be trusted."""


class CheckpointCorruptError(CheckpointError, ValueError):
    """A checkpoint step that fails its integrity check (unreadable, checksum mismatch, NaN/inf)."""


class CheckpointFormatError(CheckpointError, TypeError):
    """A file that is not the checkpoint format it should be (e.g. a .pt without a state dict)."""


class MissingDependencyError(NanochatError, ImportError):
    """An optional package (e.g. torch for conversion) is needed and not installed."""
