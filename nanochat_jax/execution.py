"""Run model-written Python (HumanEval completions) in a sandbox.

nanochat runs the program in a forked worker behind a Python-level guard and says
itself that this is no sandbox. Here each program gets a fresh interpreter in its own
session and process group, kernel limits (CPU time, address space, process count,
file size), an empty environment, and a fresh work dir deleted afterwards.

"namespaces" mode (Linux with ``unshare``; root or unprivileged user namespaces) adds
new mount, PID, network, IPC and UTS namespaces: the program sees a read-only root
holding only the system and interpreter directories, a small tmpfs as its one
writable place, no network and no other process. A shell is PID 1 there; when it
ends, the kernel kills everything the program started. As root, the program runs as
a throw-away uid, so RLIMIT_NPROC (never enforced for root) counts only its own
processes; as a user, the new user namespace gives it a count of its own.

"rlimits" mode, where namespaces do not work, keeps only the limits and the guard
(``execution_child``), and says so once on stderr. The guard runs in both modes, so a
program scores the same in either.
"""

from __future__ import annotations

import functools
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

MODES = ("namespaces", "rlimits")
OUTPUT_CAP = 1 << 20  # bytes of stdout / stderr returned
FILE_LIMIT = 16 << 20  # RLIMIT_FSIZE; also caps the captured output files
PROCESS_LIMIT = 16  # RLIMIT_NPROC (threads count too)
WORK_TMPFS = "64m"  # namespaces mode: size of the writable work dir
GRACE_S = 2.0  # interpreter start-up allowed beyond `timeout` before the group is killed
SANDBOX_UID_BASE = 0x5A000000  # as root: per-run uids drawn from [base, base + 2**24)
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = ("unshare", "mount", "chroot", "setpriv", "sh")
CHILD_SOURCE = Path(__file__).with_name("execution_child.py").read_text()

# PID 1 of the new namespaces: build the root on a tmpfs, seal it, then run the
# interpreter unprivileged inside it. Args: TMP UID(empty: stay) TMPFS_SIZE DIRS(:-joined) CMD...
PRELUDE = r"""set -eu
tmp=$1 uid=$2 size=$3 dirs=$4; shift 4
root=$tmp/root
mount -t tmpfs -o mode=755,size=1m sandbox "$root"
IFS=:
for d in /usr /bin /sbin /lib /lib32 /lib64 /libx32 $dirs; do
  if [ -L "$d" ]; then ln -s "$(readlink "$d")" "$root$d"
  elif [ -d "$d" ] && [ ! -e "$root$d" ]; then mkdir -p "$root$d"; mount --bind -o ro "$d" "$root$d"; fi
done
unset IFS
mkdir "$root/dev" "$root/work"
for n in null zero urandom; do touch "$root/dev/$n"; mount --bind "/dev/$n" "$root/dev/$n"; done
mount -t tmpfs -o "mode=1777,size=$size" work "$root/work"
mount -o remount,ro,bind "$root"
unset PWD OLDPWD
if [ -n "$uid" ]; then set -- --reuid="$uid" --regid="$uid" --clear-groups "$@"; fi
chroot "$root" setpriv --no-new-privs --inh-caps=-all --bounding-set=-all "$@"
"""


@dataclass
class ExecutionResult:
    """What nanochat's execute_code returns: the outcome and the captured output."""

    success: bool
    stdout: str
    stderr: str
    error: str | None = None
    timeout: bool = False
    memory_exceeded: bool = False


def _python_dirs() -> str:
    """The interpreter's own directories (venv and base), which the sandbox root must show."""
    exe = os.path.realpath(sys.executable)
    dirs = {os.path.dirname(os.path.dirname(exe)), os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    return ":".join(sorted(dirs))


def _can_switch_uid() -> bool:
    """Root whose user namespace maps the sandbox uids (the host's does; a container's may not)."""
    if os.geteuid() != 0:
        return False
    try:
        ranges = [tuple(map(int, line.split())) for line in Path("/proc/self/uid_map").read_text().splitlines()]
    except (OSError, ValueError):
        return False
    return any(first <= SANDBOX_UID_BASE and SANDBOX_UID_BASE + (1 << 24) <= first + count for first, _, count in ranges)


def _namespace_argv(tmp: str, inner: list[str]) -> list[str]:
    if _can_switch_uid():
        user, uid = [], str(SANDBOX_UID_BASE + random.randrange(1 << 24))
    else:
        user, uid = ["--user", "--map-root-user"], ""
    return ["unshare", *user, "--mount", "--net", "--pid", "--ipc", "--uts", "--kill-child",
            "sh", "-c", PRELUDE, "sandbox", tmp, uid, WORK_TMPFS, _python_dirs(), *inner]


def _run(argv: list[str], cwd: str, env: dict, files: tuple, wait_s: float) -> tuple[bool, int]:
    """Run argv in a new session for at most wait_s, then kill its whole process group.

    Returns (killed, returncode). The group is killed before the leader is reaped, so
    its id cannot have been reused by an unrelated process.
    """
    stdin, stdout, stderr, result = files
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr,
                            pass_fds=(result.fileno(),), start_new_session=True)
    pidfd = os.pidfd_open(proc.pid)
    try:
        finished = bool(select.select([pidfd], [], [], wait_s)[0])
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    finally:
        os.close(pidfd)
        proc.wait()
    return not finished, proc.returncode


def _read(path: str) -> str:
    with open(path, "rb") as f:
        return f.read(OUTPUT_CAP).decode("utf-8", "replace")


def _result(raw: bytes, killed: bool, returncode: int, stdout: str, stderr: str) -> ExecutionResult:
    try:
        fields = json.loads(raw)
    except ValueError:
        fields = None
    if not isinstance(fields, dict):
        # Killed by us at the deadline, or by the kernel at the CPU-time limit (soft = hard: SIGKILL), whichever came first.
        if killed or returncode in (-signal.SIGKILL, 128 + signal.SIGKILL, -signal.SIGXCPU, 128 + signal.SIGXCPU):
            return ExecutionResult(False, stdout, stderr, "Execution timed out (process killed)", timeout=True)
        return ExecutionResult(False, stdout, stderr, f"Execution failed (exit status {returncode}, no result returned)")
    error = fields.get("error")
    return ExecutionResult(fields.get("success") is True, stdout, stderr, None if error is None else str(error),
                           timeout=bool(fields.get("timeout")), memory_exceeded=bool(fields.get("memory_exceeded")))


def execute_code(code: str, timeout: float = 5.0, maximum_memory_bytes: int | None = 256 * 2**20, *,
                 isolation: str | None = None) -> ExecutionResult:
    """Run `code` as a fresh program; `isolation` forces a mode (default: isolation_mode())."""
    mode = isolation or isolation_mode()
    if mode not in MODES:
        raise ValueError(f"execute_code: isolation must be one of {MODES}, got {mode!r}")
    with tempfile.TemporaryDirectory(prefix="nanochat-sandbox-", ignore_cleanup_errors=True) as tmp:
        work = os.path.join(tmp, "root" if mode == "namespaces" else "work")
        os.mkdir(work)
        inside = "/work" if mode == "namespaces" else work
        paths = [os.path.join(tmp, name) for name in ("program.py", "stdout", "stderr", "result")]
        Path(paths[0]).write_text(code, encoding="utf-8", errors="replace")
        env = {"PATH": PATH, "LC_ALL": "C.UTF-8", "HOME": inside, "TMPDIR": inside}
        with open(paths[0], "rb") as stdin, open(paths[1], "wb") as out, open(paths[2], "wb") as err, open(paths[3], "w+b") as res:
            inner = [os.path.realpath(sys.executable), "-I", "-S", "-c", CHILD_SOURCE, inside, str(timeout),
                     str(maximum_memory_bytes or 0), str(PROCESS_LIMIT), str(FILE_LIMIT), str(res.fileno())]
            argv = _namespace_argv(tmp, inner) if mode == "namespaces" else inner
            killed, returncode = _run(argv, tmp if mode == "namespaces" else work, env, (stdin, out, err, res), timeout + GRACE_S)
            res.seek(0)
            raw = res.read(1 << 16)
        return _result(raw, killed, returncode, _read(paths[1]), _read(paths[2]))


_mode_lock = threading.Lock()


@functools.cache
def _detect_mode() -> str:
    if sys.platform == "linux" and all(shutil.which(tool, path=PATH) for tool in TOOLS):
        if execute_code("pass", timeout=10.0, isolation="namespaces").success:
            return "namespaces"
    print("WARNING: nanochat_jax.execution: Linux namespaces are unavailable here, so generated code runs with "
          "rlimits and a Python-level guard only: no network, filesystem or process isolation. "
          "Do not run untrusted code this way.", file=sys.stderr, flush=True)
    return "rlimits"


def isolation_mode() -> str:
    """The strongest mode that works on this machine: "namespaces" or "rlimits" (probed once)."""
    with _mode_lock:
        return _detect_mode()
