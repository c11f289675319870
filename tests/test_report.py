"""The report card: the summary table comes from the results files, sections in pipeline order, wall clock, plots, header."""

import json
import os
import random
import re

import pytest

from nanochat_jax import report
from nanochat_jax.results import report_dir, save_results, write_section


@pytest.fixture
def base_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_JAX_BASE_DIR", str(tmp_path / "base"))
    return tmp_path / "base"


def table_rows(text: str) -> dict[str, list[str]]:
    """``metric -> [BASE, MID, SFT, RL]`` cells of the report's summary table, parsed from the markdown."""
    body = text.split("| Metric | BASE | MID | SFT | RL |", 1)[1].splitlines()[2:]
    rows = {}
    for line in body:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_summary_table_is_filled_from_the_results_files(base_dir, tmp_path):
    rng = random.Random(7)
    tasks = ("ARC-Easy", "ARC-Challenge", "MMLU", "GSM8K", "HumanEval")
    core = rng.random()
    save_results("base", "d7", "core", {"core_metric": core, "results": {}})
    written = {}
    for source in ("mid", "sft"):
        accs = {t: rng.random() for t in tasks}
        written[source] = (accs, rng.random())
        save_results(source, "d7", "chat", {"results": accs, "chatcore": written[source][1]})
    rl_gsm8k = rng.random()
    save_results("rl", "d7", "chat", {"results": {"GSM8K": rl_gsm8k}, "chatcore": None})
    save_results("mid", "other", "chat", {"results": {"MMLU": 0.999}, "chatcore": 0.999})  # another tag: not this run's
    report.reset()
    report.generate({"base": "d7", "mid": "d7", "sft": "d7", "rl": "d7"}, copy_to=tmp_path)

    rows = table_rows((tmp_path / "report.md").read_text())
    assert rows["CORE"] == [f"{core:.4f}", "-", "-", "-"]
    for i, source in enumerate(("mid", "sft"), start=1):
        accs, chatcore = written[source]
        for task in tasks:
            assert rows[task][i] == f"{accs[task]:.4f}"
        assert rows["ChatCORE"][i] == f"{chatcore:.4f}"
    assert rows["GSM8K"][3] == f"{rl_gsm8k:.4f}" and rows["MMLU"][3] == "-" and rows["ChatCORE"][3] == "-"
    assert all(rows[t][0] == "-" for t in tasks)


def test_without_tags_each_source_uses_its_latest_evaluated_tag(base_dir, tmp_path):
    save_results("sft", "old", "chat", {"results": {"MMLU": 0.125}, "chatcore": None})
    path = save_results("sft", "new", "chat", {"results": {"MMLU": 0.375}, "chatcore": None})
    old = report_dir().parent / "eval" / "sft" / "old"
    os.utime(old, (path.stat().st_mtime - 100,) * 2)
    report.reset()
    report.generate(copy_to=tmp_path)
    assert table_rows((tmp_path / "report.md").read_text())["MMLU"][2] == "0.3750"


def test_sections_follow_the_pipeline_order_and_the_wall_clock_spans_them(base_dir, tmp_path):
    report.reset()
    header = report_dir() / "header.md"
    header.write_text(re.sub(r"Generated: .*", "Generated: 2026-01-01 00:00:00", header.read_text()))
    sections = {"chat-sft": "## Chat SFT\ntimestamp: 2026-01-01 01:00:00\n", "base-model-training": "## Base\ntimestamp: 2026-01-01 00:30:00\n",
                "midtraining": "## Mid\ntimestamp: 2026-01-01 01:30:00\n", "zz-extra": "## Extra\n"}  # fmt: skip
    for slug, text in sections.items():
        (report_dir() / f"{slug}.md").write_text(text)
    text = report.generate({}, copy_to=None).read_text()
    positions = [text.index(t) for t in ("## Base\n", "## Mid\n", "## Chat SFT\n", "## Extra\n")]
    assert positions == sorted(positions)
    assert "Total wall clock time: 1.50h (5,400s)" in text
    assert not (tmp_path / "report.md").exists()


def test_curves_become_pngs_linked_from_the_report(base_dir, tmp_path):
    run = base_dir / "runs" / "sft" / "t"
    run.mkdir(parents=True)
    records = [{"step": s, "time": 0.0, "train/loss": 3.0 - 0.1 * s, "train/dt": 0.5} for s in range(5)]
    records.append({"step": 4, "time": 0.0, "val/loss": 2.5})
    (run / "metrics.jsonl").write_text("\n".join(map(json.dumps, records)) + '\n{"step": 5, "trai')  # killed mid-line
    series = report.read_metrics(run / "metrics.jsonl")
    assert series["train/loss"] == ([0, 1, 2, 3, 4], [3.0 - 0.1 * s for s in range(5)])
    report.reset()
    report.generate({"sft": "t"}, copy_to=tmp_path)
    png = report_dir() / "plots" / "sft.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](plots/sft.png)" in (report_dir() / "report.md").read_text()
    assert f"]({png})" in (tmp_path / "report.md").read_text()  # the copy links the absolute path


def test_a_corrupt_metrics_line_names_the_file(base_dir):
    run = base_dir / "runs" / "base" / "t"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 0, "train/loss": 1.0}\nnot json\n{"step": 1, "train/loss": 0.5}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2"):
        report.read_metrics(run / "metrics.jsonl")


def test_header_names_commit_machine_and_code_size(base_dir, tmp_path):
    text = report.reset().read_text()
    for field in ("Git commit:", "Platform:", "CPU:", "RAM", "Accelerators:", "Hourly cost estimate:", "jax ", "characters:"):
        assert field in text
    tree = tmp_path / "proj"
    (tree / "train").mkdir(parents=True)
    (tree / "train" / "a.py").write_text("x = 1\ny = 2\n")
    (tree / "train" / "b.txt").write_text("not python\n")
    (tree / "configs").mkdir()
    (tree / "configs" / "c.py").write_text("z = 'é'\n")
    size = report.code_size(tree)
    assert size == {"characters": 12 + 8, "lines": 3, "files": 2, "tokens (approx.)": 5}


def test_hourly_cost_uses_nanochats_rates():
    assert report.hourly_cost([]) is None
    assert report.hourly_cost(["NVIDIA H100 80GB HBM3"] * 8) == pytest.approx(24.0)
    assert report.hourly_cost(["NVIDIA A100-SXM4-80GB", "Tesla V100", "NVIDIA L4"]) == pytest.approx(1.79 + 0.55 + 2.0)


def test_generate_needs_a_header_and_the_cli_rejects_other_commands(base_dir):
    with pytest.raises(FileNotFoundError, match="report reset"):
        report.generate({})
    with pytest.raises(ValueError, match="reset\\|generate"):
        report.main(["publish"])
    write_section("Chat SFT", [{"x": 1}])
    report.main(["reset"])
    assert not (report_dir() / "chat-sft.md").exists() and (report_dir() / "header.md").exists()
