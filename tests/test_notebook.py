"""The Colab notebook executes headlessly on CPU, top to bottom, so it cannot rot.

nbclient runs it in a fresh kernel that inherits this session's environment
(8 host CPU devices from conftest) with an empty base dir, from the repository
root; the assertions read what its cells printed.
"""

import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "nanochat_jax_colab.ipynb"


def test_notebook_executes_on_cpu(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any(c.outputs or c.execution_count for c in code), "commit the notebook without outputs"

    monkeypatch.setenv("NANOCHAT_JAX_BASE_DIR", str(tmp_path))
    monkeypatch.delenv("NANOCHAT_JAX_REPO_URL", raising=False)  # the project is installed: the install cell must skip
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    text = "".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")

    assert "skipping the install" in text
    assert re.search(r"accelerator: cpu \| 8 x cpu \| 1 process\(es\)", text)
    first, last = map(float, re.search(r"train loss: first ([\d.]+) -> last ([\d.]+) over 30 steps", text).groups())
    assert first > 8.0 and last < first - 1.0, (first, last)  # ln(4096) = 8.3 at the start, then it learns
    start, end = map(float, re.search(r"val bpb: start ([\d.]+) -> end ([\d.]+)", text).groups())
    assert end < start
    assert re.search(r"slice score over 2 tasks \(0 = random guessing\): -?\d\.\d{4}", text)
    reply = re.search(r"Assistant: (.*)", text).group(1)
    assert len(reply.strip()) > 0
    assert (tmp_path / "base_checkpoints" / "colab").is_dir()
