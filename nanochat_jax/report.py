"""The report card (nanochat's report.py): ``python -m nanochat_jax.report reset|generate``.

``reset`` clears ``$NANOCHAT_JAX_BASE_DIR/report/`` and writes ``header.md``
(time, git, machine, versions, an hourly cost estimate, code size). Each stage
writes its own section there (``results.write_section``). ``generate``
concatenates header and sections, adds the BASE/MID/SFT/RL summary table read
from the results files (``results.load_results``) and loss / bpb / reward plots
of every stage's ``metrics.jsonl``, writes ``report/report.md`` and copies it
to the working directory. No jax import: the pipeline's parent process uses
this and must not claim the accelerators its stages need.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from nanochat_jax.common import atomic_write, get_base_dir
from nanochat_jax.results import load_results, report_dir, results_path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("nanochat_jax", "train", "configs", "bench", "dev", "tests")
# nanochat's section files, in pipeline order; any other section follows them.
SECTION_ORDER = (
    "tokenizer-training", "tokenizer-evaluation", "base-model-training", "base-model-loss", "base-model-evaluation",
    "midtraining", "chat-evaluation-mid", "chat-sft", "chat-evaluation-sft", "chat-rl", "chat-evaluation-rl",
)  # fmt: skip
STAGE_TITLES = {"base": "Base model training", "mid": "Midtraining", "sft": "Chat SFT", "rl": "Chat RL"}
SOURCES = ("base", "mid", "sft", "rl")
CHAT_METRICS = ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval")
HOURLY_USD = (("h100", 3.0), ("h200", 3.0), ("a100", 1.79), ("v100", 0.55))  # nanochat's rates per GPU-hour; else $2
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


# --------------------------------------------------------------------------- header


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=PROJECT_ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def gpus() -> list[tuple[str, float]]:
    """(name, GiB) per NVIDIA GPU from nvidia-smi: asking jax would claim the devices the stages need."""
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"])
    rows = [line.rsplit(",", 1) for line in out.splitlines() if "," in line]
    return [(name.strip(), float(mib) / 1024) for name, mib in rows]


def hourly_cost(gpu_names: list[str]) -> float | None:
    if not gpu_names:
        return None
    rates = [next((usd for key, usd in HOURLY_USD if key in name.lower()), 2.0) for name in gpu_names]
    return sum(rates)


def code_size(root: Path = PROJECT_ROOT) -> dict:
    """nanochat's "bloat" numbers for the project's own Python: characters, lines, files, ~tokens (chars / 4)."""
    files = [p for d in CODE_DIRS for p in sorted((root / d).rglob("*.py"))]
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    chars = sum(len(t) for t in texts)
    return {"characters": chars, "lines": sum(t.count("\n") for t in texts), "files": len(files), "tokens (approx.)": chars // 4}


def header_text() -> str:
    commit = _run(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = bool(_run(["git", "status", "--porcelain", "--untracked-files=no"]))
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    devices = gpus()
    cost = hourly_cost([name for name, _ in devices])
    versions = {name: _version(name) for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint")}
    lines = [
        "# nanochat_jax training report", "", f"Generated: {time.strftime(TIME_FORMAT)}", "",
        "## Environment", "",
        f"- Git commit: {commit}{' (uncommitted changes)' if dirty else ''}",
        f"- Branch: {_run(['git', 'rev-parse', '--abbrev-ref', 'HEAD']) or 'unknown'}",
        f"- Platform: {platform.platform()}",
        f"- CPU: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), RAM {ram_gib:.1f} GiB",
        f"- Accelerators: {', '.join(f'{n} ({g:.0f} GiB)' for n, g in devices) or 'none (CPU)'}",
        f"- Hourly cost estimate: {f'${cost:.2f}/h' if cost is not None else 'n/a (CPU)'}",
        f"- Python {platform.python_version()}; " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "", "## Code size", "",
        *[f"- {k}: {v:,}" for k, v in code_size().items()], "",
    ]  # fmt: skip
    return "\n".join(lines)


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def reset() -> Path:
    """Remove every section, plot and report; write a fresh header (the run's start time)."""
    directory = report_dir()
    if directory.exists():
        shutil.rmtree(directory)
    with atomic_write(directory / "header.md", "w") as f:
        f.write(header_text())
    return directory / "header.md"


# --------------------------------------------------------------------------- summary table


def latest_tag(source: str) -> str | None:
    """The most recently evaluated model tag of a source (``eval/<source>/<tag>``)."""
    root = results_path(source, "_", "_").parents[1]
    tags = [p for p in root.iterdir() if p.is_dir()] if root.exists() else []
    return max(tags, key=lambda p: p.stat().st_mtime).name if tags else None


def summary_values(tags: dict[str, str | None]) -> dict[str, dict[str, float | None]]:
    """metric -> source -> value, from the results files of the given ``{source: tag}``."""
    table = {m: dict.fromkeys(SOURCES) for m in ("CORE", *CHAT_METRICS, "ChatCORE")}
    for source in SOURCES:
        tag = tags.get(source)
        if tag is None:
            continue
        core = load_results(source, tag, "core")
        if core is not None:
            table["CORE"][source] = core.get("core_metric")
        chat = load_results(source, tag, "chat")
        if chat is not None:
            for metric in CHAT_METRICS:
                table[metric][source] = chat.get("results", {}).get(metric)
            table["ChatCORE"][source] = chat.get("chatcore")
    return table


def summary_table(tags: dict[str, str | None]) -> str:
    lines = ["| Metric | BASE | MID | SFT | RL |", "|---|---|---|---|---|"]
    for metric, row in summary_values(tags).items():
        lines.append(f"| {metric} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in row.values()) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


def read_metrics(path: Path) -> dict[str, tuple[list[int], list[float]]]:
    """``name -> (steps, values)`` of a ``metrics.jsonl`` (non-finite values, logged as strings, are dropped)."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                continue  # a run killed mid-write leaves a partial last line
            raise ValueError(f"{path} line {n} is not valid JSON") from None
        for key, value in record.items():
            if key not in ("step", "time") and isinstance(value, (int, float)):
                steps, values = series.setdefault(key, ([], []))
                steps.append(record["step"])
                values.append(value)
    return series


PLOTTED = re.compile(r"^(train/loss|val/.*|rl/.*|chat/.*|core/metric)$")


def plot_stage(stage: str, tag: str, out: Path) -> Path | None:
    """One PNG of a stage's curves (train loss, val bpb/loss, RL reward and pass@k), or None without metrics."""
    path = get_base_dir() / "runs" / stage / tag / "metrics.jsonl"
    if not path.exists():
        return None
    series = {k: v for k, v in read_metrics(path).items() if PLOTTED.match(k) and len(v[0]) > 0}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(4 * len(series), 3), squeeze=False)
    for ax, (name, (steps, values)) in zip(axes[0], sorted(series.items())):
        ax.plot(steps, values, marker="." if len(steps) < 30 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
    fig.suptitle(f"{stage} / {tag}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out, "wb") as f:
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)
    return out


def plots_section(tags: dict[str, str | None]) -> str:
    lines = []
    for stage in SOURCES:
        tag = tags.get(stage)
        if tag and plot_stage(stage, tag, report_dir() / "plots" / f"{stage}.png"):
            lines.append(f"![{stage} curves](plots/{stage}.png)")
    return "## Training curves\n\n" + "\n\n".join(lines) + "\n" if lines else ""


# --------------------------------------------------------------------------- generate


def _timestamp(text: str) -> float | None:
    m = re.search(r"^(?:timestamp|Generated): (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)$", text, re.M)
    return time.mktime(time.strptime(m.group(1), TIME_FORMAT)) if m else None


def generate(tags: dict[str, str | None] | None = None, copy_to: Path | None = Path.cwd()) -> Path:
    """Write ``report/report.md`` (and a copy in ``copy_to``); ``tags`` default to each source's latest evaluated tag."""
    directory = report_dir()
    tags = tags if tags is not None else {s: latest_tag(s) for s in SOURCES}
    header = directory / "header.md"
    if not header.exists():
        raise FileNotFoundError(f"no report header in {directory}; run `python -m nanochat_jax.report reset` before training")
    rank = {slug: i for i, slug in enumerate(SECTION_ORDER)}
    skip = {"header", "report"}
    sections = sorted((p for p in directory.glob("*.md") if p.stem not in skip), key=lambda p: (rank.get(p.stem, len(rank)), p.stem))
    texts = [p.read_text() for p in sections]
    start, ends = _timestamp(header.read_text()), [t for t in map(_timestamp, texts) if t is not None]
    wall = f"{(max(ends) - start) / 3600:.2f}h ({max(ends) - start:,.0f}s)" if start and ends else "unknown"
    summary = f"## Summary\n\n{summary_table(tags)}\n\nTotal wall clock time: {wall}\n"
    body = "\n".join([header.read_text(), *texts, plots_section(tags), summary])
    with atomic_write(directory / "report.md", "w") as f:
        f.write(body)
    if copy_to is not None:
        with atomic_write(Path(copy_to) / "report.md", "w") as f:
            f.write(body.replace("](plots/", f"]({directory / 'plots'}/"))
    return directory / "report.md"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in (["reset"], ["generate"]):
        raise ValueError(f"usage: python -m nanochat_jax.report reset|generate (got {' '.join(argv) or 'nothing'})")
    path = reset() if argv == ["reset"] else generate()
    print(f"wrote {path}" + ("" if argv == ["reset"] else f" and {Path.cwd() / 'report.md'}"))


if __name__ == "__main__":
    from nanochat_jax import cli

    cli.main(main)
