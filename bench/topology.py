"""The same pretraining run on two topologies: P processes x D CPU devices each vs 1 process x P*D devices.

    python -m bench.topology                       # issue 14's reproduction: 2 x 4 vs 1 x 8, d2, seq 128, 30 steps
    python -m bench.topology --resume_at 15        # + each topology resumed from the other's step-15 checkpoint

Every run is a real ``python -m train.pretrain`` on the embedded corpus in one
fresh base dir, its processes joined by ``jax.distributed`` on localhost (as a
manual multi-host launch does; the single process too, so both layouts sum
gradients with the same gloo collectives). A third run, 1 x 8 without
``jax.distributed`` (XLA's in-process collectives), shows what summation order
alone does. Losses and val bpb come from each run's ``metrics.jsonl``; prints
val bpb at step 0 and the largest per-step differences. ``tests/test_topology.py``
uses the same launcher.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = 30


def run_args(tag: str, steps: int = STEPS, **overrides) -> list[str]:
    """``train.pretrain`` arguments of the issue's run (tiny, depth 2, seq 128, device batch 2 on 8 devices)."""
    fields = {
        "model.depth": 2, "model.max_seq_len": 128, "loop.device_batch_size": 2, "loop.total_batch_size": 2 * 128 * 8,
        "loop.num_iterations": steps, "loop.eval_every": 10, "loop.eval_tokens": 4 * 2 * 128 * 8,
        "loop.sample_every": -1, "loop.core_metric_every": -1, "loop.save_every": 15, "loop.model_tag": tag,
        "data.tokenizer_vocab_size": 320, "data.tokenizer_max_chars": 300_000, "data.tokenizer_threads": 1,
        "log.tensorboard": False, "log.log_every": 10,
    }
    fields.update(overrides)
    return ["--config=configs/tiny.py"] + [f"--config.{k}={v}" for k, v in fields.items()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(base_dir: Path, processes: int, devices: int, args: list[str], timeout: float = 600, distributed: bool = True) -> None:
    """Run ``train.pretrain args`` as ``processes`` JAX processes of ``devices`` CPU devices each; raise on failure.

    ``distributed``: join them through ``jax.distributed`` (a coordinator) even when
    there is one, so every layout sums gradients with the same cross-process CPU
    collectives (gloo); XLA's in-process collectives add in another order.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(NANOCHAT_JAX_BASE_DIR=str(base_dir), JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_COMPILATION_CACHE_DIR=str(base_dir / "jax_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    if processes > 1 or distributed:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{free_port()}", JAX_NUM_PROCESSES=str(processes))
    cmd = [sys.executable, "-m", "train.pretrain", *args]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env={**env, "JAX_PROCESS_ID": str(i)} if "JAX_NUM_PROCESSES" in env else env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(processes)]
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, out) in enumerate(zip(procs, outs)):
        if p.returncode != 0:
            raise RuntimeError(f"{processes}x{devices} process {i} exited {p.returncode}:\n{out[-4000:]}")


def read_metrics(base_dir: Path, tag: str) -> tuple[dict[int, float], dict[int, float]]:
    """(raw train loss by step, val bpb by step) of run ``tag``; a step logged twice keeps its last value."""
    losses, bpb = {}, {}
    for line in (base_dir / "runs" / "base" / tag / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "train/raw_loss" in rec:
            losses[rec["step"]] = rec["train/raw_loss"]
        if "val/bpb" in rec:
            bpb[rec["step"]] = rec["val/bpb"]
    return losses, bpb


def copy_checkpoints(base_dir: Path, src: str, dst: str, upto: int) -> None:
    """Run ``src``'s checkpoints of steps <= ``upto`` as run ``dst``'s, to resume from on another topology."""
    ckpts = base_dir / "base_checkpoints"
    shutil.copytree(ckpts / src, ckpts / dst, ignore=lambda d, names: [n for n in names if n.isdigit() and int(n) > upto])


def max_diff(a: dict[int, float], b: dict[int, float]) -> float:
    if a.keys() != b.keys():
        raise ValueError(f"runs logged different steps: {sorted(a)} vs {sorted(b)}")
    return max(abs(a[k] - b[k]) for k in a)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--devices", type=int, default=4, help="CPU devices per process in the multi-process run")
    p.add_argument("--resume_at", type=int, default=0,
                   help=">0: also resume each topology from the other's checkpoint at this step")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        one, many = (1, a.processes * a.devices), (a.processes, a.devices)
        launch(base, *one, run_args("one"))  # first: it trains the shared tokenizer
        launch(base, *many, run_args("many"))
        launch(base, *one, run_args("one_in_process"), distributed=False)
        runs = {name: read_metrics(base, name) for name in ("one", "many", "one_in_process")}
        if a.resume_at:
            for name, src, topo in (("many_from_one", "one", many), ("one_from_many", "many", one)):
                copy_checkpoints(base, src, name, a.resume_at)
                launch(base, *topo, run_args(name, **{"loop.resume_step": a.resume_at}))
                runs[name] = read_metrics(base, name)
    (l1, b1), (lm, bm), (li, bi) = runs["one"], runs["many"], runs["one_in_process"]
    print(f"val bpb at step 0: 1x{one[1]} {b1[0]:.6f} | {many[0]}x{many[1]} {bm[0]:.6f} | 1x{one[1]} in-process {bi[0]:.6f}")
    print(f"{many[0]}x{many[1]} vs 1x{one[1]}: max |d loss| over {len(l1)} steps {max_diff(l1, lm):.3e}, "
          f"max |d val bpb| {max_diff(b1, bm):.3e}")
    print(f"{many[0]}x{many[1]} vs 1x{one[1]} in-process: max |d loss| {max_diff(li, lm):.3e}, "
          f"max |d val bpb| {max_diff(bi, bm):.3e}")
    for name in sorted(runs.keys() - {"one", "many", "one_in_process"}):
        lr, br = runs[name]
        tail = {k: l1[k] for k in lr}
        print(f"{name}: max |d loss| vs uninterrupted over steps {min(lr)}-{max(lr)}: {max_diff(tail, lr):.3e}, "
              f"val bpb {({k: round(v, 6) for k, v in br.items()})}")


if __name__ == "__main__":
    main()
