"""Scalars to tensorboard and to ``metrics.jsonl`` in the run directory.

Every logged scalar goes to both, on process 0 only, so a run can be plotted
with tensorboard or parsed with two lines of Python. tensorboardX is imported
lazily so machines without it (for example a bare GPU box) still train; the
JSONL file is always written.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from nanochat_jax.common import print0, process_index


class MetricsLogger:
    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self._enabled = process_index() == 0
        self._writer = None
        self._jsonl = None
        if not self._enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                print0("tensorboardX is not installed: logging to metrics.jsonl only")
            else:
                self._writer = SummaryWriter(str(self.run_dir))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self._enabled:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        record = {"step": int(step), "time": time.time(), **{k: (v if math.isfinite(v) else str(v)) for k, v in clean.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for k, v in clean.items():
                self._writer.add_scalar(k, v, step)

    def log_text(self, step: int, tag: str, text: str) -> None:
        if self._enabled and self._writer is not None:
            self._writer.add_text(tag, text, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._jsonl is not None:
            self._jsonl.close()
