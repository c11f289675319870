"""Run the hostile corpus through execute_code, one program at a time; print one JSON line each.

tests/test_execution.py starts this inside a PID namespace of its own (when the machine
allows), so a sandbox that fails its test still cannot reach the test runner or the
machine. It is a child subreaper: whatever a program leaves behind, however it
detached, is reparented here and counted as `leftover`.
Usage: python runner.py MODE CORPUS_JSON  (a list of {"name", "code", "timeout"}; "$runner_pid" in
a program becomes this process's pid).
"""

import ctypes
import dataclasses
import json
import os
import sys
import time

from nanochat_jax.execution import execute_code

PR_SET_CHILD_SUBREAPER = 36
SETTLE_S = 2.0  # how long leftovers get to vanish; the corpus's sleepers live 20-30 s


def live_descendants() -> int:
    """Live (non-zombie) processes below this one."""
    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError, ValueError):
            continue
        if state != "Z":
            parents[int(entry)] = int(ppid)
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return len(found)


def reap_orphans() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def main() -> None:
    mode, corpus_path = sys.argv[1:]
    with open(corpus_path) as f:
        corpus = json.load(f)
    if ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1) != 0:
        raise SystemExit("runner: prctl(PR_SET_CHILD_SUBREAPER) failed")
    for item in corpus:
        start = time.monotonic()
        code = item["code"].replace("$runner_pid", str(os.getpid()))
        result = execute_code(code, timeout=item["timeout"], isolation=mode)
        wall = time.monotonic() - start
        deadline = time.monotonic() + SETTLE_S
        while (leftover := live_descendants()) and time.monotonic() < deadline:
            reap_orphans()
            time.sleep(0.05)
        reap_orphans()
        print(json.dumps({"name": item["name"], "wall": wall, "leftover": leftover, **dataclasses.asdict(result)}), flush=True)


if __name__ == "__main__":
    main()
