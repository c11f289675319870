"""The one-command pipeline on configs/smoke.py: every stage, killed during SFT and resumed, then all skipped.

One module fixture runs the pipeline three times in one base dir (a few minutes on
2 cores): killed (SIGKILL to its process group) right after SFT's second
checkpoint, then to the end (finished stages skipped, SFT resumed), then again
(everything skipped). ``--from`` and the config overrides are checked cheaply.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nanochat_jax.config import ConfigError
from train import pipeline

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "configs" / "smoke.py")
KILL_AT = re.compile(r"^\[\d+/\d+ sft \|.*\] Checkpoint step 4 ->")


def launch(base: Path, cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "NANOCHAT_JAX_BASE_DIR": str(base)}  # conftest's 8 CPU devices are inherited
    cmd = [sys.executable, "-u", "-m", "train.pipeline", f"--config={SMOKE}", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def run_to_end(base: Path, cwd: Path, *args: str) -> str:
    proc = launch(base, cwd, *args)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    return out


def run_killed_during_sft(base: Path, cwd: Path) -> str:
    proc, lines = launch(base, cwd), []
    deadline = time.time() + 900
    for line in proc.stdout:
        lines.append(line)
        if KILL_AT.match(line):
            os.killpg(proc.pid, signal.SIGKILL)  # the pipeline and its stage process, with no chance to clean up
            break
        assert time.time() < deadline, "".join(lines[-50:])
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(lines[-50:])
    return "".join(lines)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base, cwd = tmp_path_factory.mktemp("pipeline_base"), tmp_path_factory.mktemp("pipeline_cwd")
    killed = run_killed_during_sft(base, cwd)
    sft_marked = (base / "pipeline" / "sft.json").exists()
    resumed = run_to_end(base, cwd)
    again = run_to_end(base, cwd)
    return {"base": base, "cwd": cwd, "killed": killed, "sft_marked": sft_marked, "resumed": resumed, "again": again}


@pytest.fixture
def names(runs, monkeypatch):
    """The stages the smoke config runs here (base_eval, RL, ... where their modules exist), with the base dir set."""
    monkeypatch.setenv("NANOCHAT_JAX_BASE_DIR", str(runs["base"]))
    return [s.name for s in pipeline.plan(pipeline.load_pipeline_config([f"--config={SMOKE}"]))[0]]


def stages_of(out: str) -> dict[str, str]:
    """stage -> "done" | "skipped", from the pipeline's own lines."""
    return {m[1]: m[2] for m in re.finditer(r"^\[pipeline\] \d+/\d+ (\w+): (done|skipped)", out, re.M)}


def test_the_killed_run_finished_the_stages_before_sft_only(runs, names):
    assert stages_of(runs["killed"]) == dict.fromkeys(names[: names.index("sft")], "done")
    assert not runs["sft_marked"]


def test_the_restarted_run_skips_finished_stages_resumes_sft_and_completes(runs, names):
    cut = names.index("sft")
    assert stages_of(runs["resumed"]) == {**dict.fromkeys(names[:cut], "skipped"), **dict.fromkeys(names[cut:], "done")}
    resumed_from = re.search(r"sft: resuming from checkpoint step (\d+)", runs["resumed"])
    assert resumed_from and int(resumed_from[1]) in (2, 4)
    assert f"Resumed from {runs['base'] / 'chatsft_checkpoints' / 'smoke'} step {resumed_from[1]}" in runs["resumed"]
    assert pipeline.checkpoint_steps("sft", "smoke")[-1] == 20
    assert "[pipeline] finished in" in runs["resumed"]


def test_a_third_run_skips_everything_and_rewrites_the_report(runs, names):
    assert stages_of(runs["again"]) == dict.fromkeys(names, "skipped")
    report = (runs["cwd"] / "report.md").read_text()
    for section in ("## Tokenizer training", "## Tokenizer evaluation", "## Base model training", "## Midtraining",
                    "## Chat SFT", "## Chat evaluation sft", "## Pipeline stages", "| Metric | BASE | MID | SFT | RL |"):  # fmt: skip
        assert section in report
    sft_chat = json.loads((runs["base"] / "eval" / "sft" / "smoke" / "chat.json").read_text())
    mmlu_row = next(line for line in report.splitlines() if line.startswith("| MMLU |"))
    assert mmlu_row.split("|")[3].strip() == f"{sft_chat['results']['MMLU']:.4f}"
    assert (runs["base"] / "report" / "plots" / "sft.png").exists()


def test_from_reruns_that_stage_and_the_ones_after_it(runs, names):
    out = run_to_end(runs["base"], runs["cwd"], f"--from={names[-1]}")
    assert stages_of(out) == {**dict.fromkeys(names[:-1], "skipped"), names[-1]: "done"}


def test_overrides_reach_the_stage_sections_and_bad_ones_name_the_field():
    cfg = pipeline.load_pipeline_config([f"--config={SMOKE}", "--config.sft.device_batch_size=3", "--config.mid.loop.seed=5"])
    assert (cfg.sft.loop.device_batch_size, cfg.mid.loop.seed, cfg.base.loop.seed) == (3, 5, 42)
    with pytest.raises(ConfigError, match=r"'sft\.loop\.batch'.*sft\.loop\.device_batch_size"):
        pipeline.load_pipeline_config([f"--config={SMOKE}", "--config.sft.loop.batch=3"])
    with pytest.raises(ConfigError, match="get_pipeline_config"):
        pipeline.load_pipeline_config([f"--config={ROOT / 'configs' / 'tiny_sft.py'}"])
    with pytest.raises(pipeline.PipelineError, match="--from=nope: not a stage"):
        pipeline.run_pipeline([f"--config={SMOKE}"], "nope")


def test_the_tiny_and_d20_pipelines_chain_one_model_tag_and_keep_their_pretraining_configs():
    from configs import d20, tiny

    for module, tag in ((tiny, "tiny"), (d20, "d20")):
        cfg = module.get_pipeline_config()
        assert set(pipeline.model_tags(cfg).values()) == {tag}
        assert module.get_config().loop.num_iterations == {"tiny": 400, "d20": -1}[tag]  # train.pretrain's horizon is unchanged
