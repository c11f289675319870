"""The CORE eval bundle (DCLM's ``eval_bundle``): where it lives, how it is fetched, how it is read.

Layout (nanochat's)::

    core.yaml            icl_tasks: label, icl_task_type, dataset_uri, num_fewshot: [k],
                         continuation_delimiter (default " ")
    eval_meta_data.csv   "Eval Task", "Random baseline" (percent)
    eval_data/**.jsonl   MC {"query","choices","gold"}, schema {"context_options",
                         "continuation","gold"}, LM {"context","continuation"}

``bundle_dir=None`` is ``$NANOCHAT_JAX_BASE_DIR/eval_bundle``, downloaded once
from nanochat's URL (resumable, atomic: the zip is extracted beside the
target and renamed into place). ``"slice"`` is the small embedded bundle
(``nanochat_jax/data/eval_bundle``, see its PROVENANCE.md): real rows of 10
of the 22 tasks, offline; its scores are a smoke signal, not CORE.
Every malformed file raises one ``BundleError`` naming it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from nanochat_jax.common import get_base_dir, print0
from nanochat_jax.dataset import download_url

BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
SLICE_SPEC = "slice"
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
ROW_KEYS = {
    "multiple_choice": ("query", "choices", "gold"),
    "schema": ("context_options", "continuation", "gold"),
    "language_modeling": ("context", "continuation"),
}


class BundleError(ValueError):
    """A missing or malformed bundle file; the message names it."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    label: str
    task_type: str
    dataset_uri: str
    num_fewshot: int
    delimiter: str
    baseline: float  # random-guess accuracy, percent


def slice_bundle_dir() -> Path:
    return Path(__file__).resolve().parent / "data" / "eval_bundle"


def default_bundle_dir() -> Path:
    return get_base_dir() / "eval_bundle"


def is_slice(bundle: Path) -> bool:
    return Path(bundle).resolve() == slice_bundle_dir()


def resolve_bundle(bundle_dir: str | os.PathLike | None = None, *, url: str = BUNDLE_URL) -> Path:
    """``None``/``""``: the downloaded bundle (fetched now if missing); ``"slice"``: the embedded one; else a path."""
    if bundle_dir is None or str(bundle_dir) == "":
        target = default_bundle_dir()
        if not (target / "core.yaml").exists():
            download_bundle(target, url=url)
        return target
    if str(bundle_dir) == SLICE_SPEC:
        return slice_bundle_dir()
    path = Path(bundle_dir).expanduser()
    if not (path / "core.yaml").is_file():
        raise BundleError(f"{path / 'core.yaml'} not found: --bundle_dir must be an unzipped DCLM eval_bundle")
    return path


def _check_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as z:
            if not any(n.endswith("core.yaml") for n in z.namelist()):
                raise BundleError(f"{path} holds no core.yaml: not an eval bundle")
    except zipfile.BadZipFile as e:
        raise BundleError(f"{path} is not a zip file ({e})") from None


def download_bundle(target: Path, *, url: str = BUNDLE_URL, **download_kwargs) -> Path:
    """Fetch the zip (resuming a partial one), unzip it beside ``target``, rename into place, delete the zip."""
    target.parent.mkdir(parents=True, exist_ok=True)
    archive = target.parent / "eval_bundle.zip"
    print0(f"Downloading the CORE eval bundle (~162 MB) from {url} to {target}")
    download_url(url, archive, validate=_check_zip, resume=True, progress=True, **download_kwargs)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".eval_bundle.") as work:
        with zipfile.ZipFile(archive) as z:
            z.extractall(work)
        yaml_path = next(Path(work).rglob("core.yaml"))
        if target.exists():
            shutil.rmtree(target)
        os.replace(yaml_path.parent, target)
    archive.unlink()
    return target


def _read_yaml(path: Path):
    import yaml

    if not path.is_file():
        raise BundleError(f"{path} not found: the bundle has no task list")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise BundleError(f"{path} is not valid YAML ({e})") from None


def load_baselines(path: Path) -> dict[str, float]:
    """``eval_meta_data.csv``: task label -> random baseline in percent."""
    if not path.is_file():
        raise BundleError(f"{path} not found: the bundle has no random baselines")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"Eval Task", "Random baseline"} <= set(reader.fieldnames or ()):
            raise BundleError(f"{path} needs the columns 'Eval Task' and 'Random baseline', has {reader.fieldnames}")
        try:
            return {row["Eval Task"]: float(row["Random baseline"]) for row in reader}
        except (TypeError, ValueError) as e:
            raise BundleError(f"{path} line {reader.line_num}: bad 'Random baseline' ({e})") from None


def load_tasks(bundle: Path) -> list[TaskSpec]:
    """The tasks of ``core.yaml`` with their baselines, checked."""
    yaml_path = bundle / "core.yaml"
    config = _read_yaml(yaml_path)
    tasks = config.get("icl_tasks") if isinstance(config, dict) else None
    if not isinstance(tasks, list) or not tasks:
        raise BundleError(f"{yaml_path} needs a non-empty 'icl_tasks' list")
    baselines = load_baselines(bundle / "eval_meta_data.csv")
    specs = []
    for i, task in enumerate(tasks):
        where = f"{yaml_path} icl_tasks[{i}]"
        try:
            label, task_type, uri, shots = task["label"], task["icl_task_type"], task["dataset_uri"], task["num_fewshot"][0]
        except (KeyError, TypeError, IndexError) as e:
            raise BundleError(f"{where} needs label, icl_task_type, dataset_uri and num_fewshot: [k] ({e!r} missing)") from None
        if task_type not in TASK_TYPES:
            raise BundleError(f"{where} ({label}): icl_task_type {task_type!r} is not one of {TASK_TYPES}")
        if label not in baselines:
            raise BundleError(f"{bundle / 'eval_meta_data.csv'} has no 'Random baseline' for task {label!r}")
        delimiter = task.get("continuation_delimiter", " ")
        specs.append(TaskSpec(label, task_type, uri, int(shots), delimiter, baselines[label]))
    return specs


def _check_row(row, spec: TaskSpec) -> str | None:
    """Why ``row`` does not fit its task's schema, or None."""
    keys = ROW_KEYS[spec.task_type]
    if not isinstance(row, dict) or any(k not in row for k in keys):
        return f"a {spec.task_type} row needs the keys {keys}"
    options = row.get("choices", row.get("context_options"))
    if options is not None:
        if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
            return "choices/context_options must be a non-empty list of strings"
        if not isinstance(row["gold"], int) or not 0 <= row["gold"] < len(options):
            return f"gold {row['gold']!r} is not an index into the {len(options)} options"
    return None


def load_rows(bundle: Path, spec: TaskSpec) -> list[dict]:
    """A task's jsonl rows, each checked against its type's schema."""
    path = bundle / "eval_data" / spec.dataset_uri
    if not path.is_file():
        raise BundleError(f"{path} not found (task {spec.label} in {bundle / 'core.yaml'})")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BundleError(f"{path} line {n}: not valid JSON ({e})") from None
            if problem := _check_row(row, spec):
                raise BundleError(f"{path} line {n}: {problem}")
            rows.append(row)
    if len(rows) <= spec.num_fewshot:
        raise BundleError(f"{path}: {len(rows)} rows cannot give {spec.num_fewshot} few-shot examples per item")
    return rows
