"""dev/launch/pretrain_2x8.sbatch, run with bash and a fake ``srun`` (tests/fake_srun.py).

Scaled down to one node × 2 CPU tasks of the smoke config, the template must form
one 2-process JAX job through jax's own SLURM detection (no JAX_* variables set)
and finish; unscaled, it must ask srun for 2 nodes × 8 tasks of the d20 run.
"""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "dev/launch/pretrain_2x8.sbatch"
SLURM_PORT_BASE = 65535 - 2**12 + 1  # jax's SLURM coordinator port = base + SLURM_JOB_ID % 4096


def free_slurm_job_id() -> int:
    """A job id whose coordinator port (as jax derives it) is free on this machine."""
    for offset in range(os.getpid() % 4096, os.getpid() % 4096 + 4096):
        port = SLURM_PORT_BASE + offset % 4096
        with socket.socket() as s:
            try:
                s.bind(("localhost", port))
            except OSError:
                continue
        return offset % 4096
    raise RuntimeError("no free port in jax's SLURM range")


def fake_path(tmp_path: Path, body: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / "srun").chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


def run_script(env: dict, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(["bash", str(SCRIPT)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"the launch did not finish in {timeout}s:\n{out}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def test_template_forms_one_two_process_jax_job(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "XLA_FLAGS"))}
    env.update(PATH=fake_path(tmp_path, f'exec "{sys.executable}" "{ROOT / "tests/fake_srun.py"}" "$@"'),
               SLURM_JOB_ID=str(free_slurm_job_id()), NANOCHAT_JAX_BASE_DIR=str(tmp_path / "base"), JAX_PLATFORMS="cpu",
               NANOCHAT_CONFIG="configs/smoke.py", NANOCHAT_NODES="1", NANOCHAT_TASKS_PER_NODE="2",
               NANOCHAT_PYTHON=sys.executable)  # fmt: skip
    result = run_script(env, timeout=240)
    assert result.returncode == 0, result.stdout
    assert "1 node(s) x 2 task(s)" in result.stdout
    # One device per process (a GPU per task), two processes: the global mesh has 2 devices.
    assert "Devices: 2 x cpu across 2 process(es)" in result.stdout, result.stdout
    assert "Summary (base)" in result.stdout and "iterations        4" in result.stdout, result.stdout
    assert (tmp_path / "base/base_checkpoints/smoke/4").is_dir()


def test_template_asks_for_two_nodes_of_eight_tasks(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NANOCHAT_", "SLURM_"))}
    env.update(PATH=fake_path(tmp_path, 'printf "%s\\n" "$@"'), SLURM_JOB_ID="7", SLURM_CPUS_PER_TASK="12")
    result = run_script(env, timeout=30)
    assert result.returncode == 0, result.stdout
    args = result.stdout.splitlines()[1:]
    assert args == ["--nodes=2", "--ntasks-per-node=8", "--cpus-per-task=12", "--kill-on-bad-exit=1", "python", "-m",
                    "train.pretrain", "--config=configs/d20.py"]  # fmt: skip
    directives = [line.split()[1] for line in SCRIPT.read_text().splitlines() if line.startswith("#SBATCH")]
    assert {"--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8"} <= set(directives)
    assert not any(d.startswith(("--gpus-per-task", "--gpu-bind")) for d in directives)  # each task must see all 8 GPUs
