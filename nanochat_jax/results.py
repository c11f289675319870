"""Where every stage and evaluation leaves its numbers, for the report card.

Results: ``$NANOCHAT_JAX_BASE_DIR/eval/<source>/<tag>/<kind>.json`` (``source``
is the checkpoint stage: base, mid, sft, rl; ``kind`` e.g. core, bpb, chat).
Report sections: ``$NANOCHAT_JAX_BASE_DIR/report/<slug>.md``, one per stage,
rewritten whole each time. Both are written atomically by process 0 only.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from nanochat_jax.common import atomic_write, get_base_dir, process_index


def results_path(source: str, tag: str, kind: str) -> Path:
    return get_base_dir() / "eval" / source / tag / f"{kind}.json"


def save_results(source: str, tag: str, kind: str, data: dict) -> Path:
    """Write one results file; returns its path (written by process 0 only)."""
    path = results_path(source, tag, kind)
    if process_index() == 0:
        record = {"source": source, "tag": tag, "kind": kind, "time": time.strftime("%Y-%m-%d %H:%M:%S"), **data}
        with atomic_write(path, "w") as f:
            json.dump(record, f, indent=2, default=float)
    return path


def load_results(source: str, tag: str, kind: str) -> dict | None:
    """The results file, or None when that evaluation has not run."""
    path = results_path(source, tag, kind)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"results file {path} is not valid JSON ({e}); delete it and rerun that evaluation") from None


def report_dir() -> Path:
    return get_base_dir() / "report"


def section_slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def write_section(title: str, items: list[Any]) -> Path:
    """nanochat's ``get_report().log(section, data)``: dicts become bullet lists, strings are copied verbatim."""
    lines = [f"## {title}", f"timestamp: {time.strftime('%Y-%m-%d %H:%M:%S')}", ""]
    for item in items:
        if isinstance(item, dict):
            for key, value in item.items():
                shown = f"{value:.4f}" if isinstance(value, float) else value
                lines.append(f"- {key}: {shown}")
        else:
            lines.append(str(item))
        lines.append("")
    path = report_dir() / f"{section_slug(title)}.md"
    if process_index() == 0:
        with atomic_write(path, "w") as f:
            f.write("\n".join(lines))
    return path
