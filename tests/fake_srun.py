"""A stand-in for SLURM's ``srun`` on one machine, for tests/test_launch.py.

Starts ``--nodes × --ntasks-per-node`` copies of the command locally with the
variables a real ``srun`` gives each task (the ones jax's SLURM cluster
detection reads, plus the node/step counts), all on ``localhost``. Like
``--kill-on-bad-exit=1``, the first task that fails stops the others, and its
exit status is ours. ``SLURM_JOB_ID`` comes from the caller, as sbatch sets it.
"""

import os
import subprocess
import sys
import time


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    opts, i = {}, 0
    while i < len(argv) and argv[i].startswith("--"):
        key, _, value = argv[i][2:].partition("=")
        opts[key] = value
        i += 1
    return opts, argv[i:]


def main() -> int:
    opts, command = parse(sys.argv[1:])
    nodes, per_node = int(opts.get("nodes", 1)), int(opts.get("ntasks-per-node", 1))
    ntasks = nodes * per_node
    common = {"SLURM_NTASKS": str(ntasks), "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_STEP_NUM_NODES": str(nodes),
              "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_STEP_NODELIST": "localhost", "SLURM_JOB_NODELIST": "localhost"}  # fmt: skip
    tasks = []
    for rank in range(ntasks):
        env = {**os.environ, **common, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % per_node),
               "SLURM_NODEID": str(rank // per_node)}  # fmt: skip
        tasks.append(subprocess.Popen(command, env=env))
    while True:
        codes = [t.poll() for t in tasks]
        failed = [c for c in codes if c not in (None, 0)]
        if failed or all(c == 0 for c in codes):
            for t in tasks:
                if t.poll() is None:
                    t.kill()
            return failed[0] if failed else 0
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
