"""The sandboxed side of ``nanochat_jax.execution``: kernel limits, the guard, then the program.

Run as ``python -I -S -c <this file's source> WORKDIR TIMEOUT MEMORY NPROC FSIZE RESULT_FD``
with the program on stdin; it writes one JSON outcome to RESULT_FD. Stdlib only and
nothing from the project: in "namespaces" mode it runs in a root that holds only the
system and the interpreter.

The guard is nanochat's ``reliability_guard`` list, also applied to ``posix`` (where
``os`` gets its functions), plus exec/spawn/setsid, sockets and writes outside the work
dir. It is a seatbelt against accidents, not a boundary: ctypes or ``_io`` walk past it.
"""

import builtins
import faulthandler
import io
import json
import math
import os
import posix
import resource
import shutil
import signal
import socket
import subprocess
import sys

OS_NAMES = ("kill killpg system putenv remove removedirs rmdir fchdir setuid fork forkpty rename renames truncate "
            "replace unlink fchmod fchown chmod chown chroot lchflags lchmod lchown getcwd chdir "
            "execv execve spawnv spawnve posix_spawn posix_spawnp setsid").split()
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class Timeout(Exception):
    """Raised into the program by SIGALRM when its wall-clock time is up."""


def set_limits(timeout: float, memory: int, nproc: int, fsize: int) -> None:
    """Soft = hard, so the program cannot raise them back (it has no CAP_SYS_RESOURCE)."""
    cpu = math.ceil(timeout) + 1
    limits = [(resource.RLIMIT_CPU, cpu), (resource.RLIMIT_NPROC, nproc), (resource.RLIMIT_FSIZE, fsize), (resource.RLIMIT_CORE, 0)]
    if memory:
        limits += [(resource.RLIMIT_AS, memory), (resource.RLIMIT_DATA, memory), (resource.RLIMIT_STACK, memory)]
    for which, value in limits:
        hard = resource.getrlimit(which)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (value, value))


def confine_writes(workdir: str) -> None:
    """open() / os.open() for writing only inside the work dir (symlinks resolved)."""
    real_open, real_os_open = io.open, os.open

    def check(path):
        if not isinstance(path, int):
            full = os.path.realpath(os.path.join(workdir, os.fsdecode(path)))
            if os.path.commonpath([full, workdir]) != workdir:
                raise PermissionError(f"sandbox: writing outside the work dir is not allowed: {path!r}")

    def guarded_open(file, mode="r", *args, **kwargs):
        if set(mode) & set("wax+"):
            check(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & WRITE_FLAGS:
            check(path)
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = posix.open = guarded_os_open


def guard(workdir: str) -> None:
    faulthandler.disable()
    os.environ["OMP_NUM_THREADS"] = "1"
    confine_writes(workdir)
    builtins.exit = builtins.quit = builtins.help = None
    for module in (os, posix):
        for name in OS_NAMES:
            setattr(module, name, None)
    for module, names in ((shutil, "rmtree move chown"), (subprocess, "Popen"),
                          (socket, "socket create_connection create_server socketpair fromfd"), (signal, "pthread_kill")):
        for name in names.split():
            setattr(module, name, None)
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter", "_socket"):
        sys.modules[name] = None


def run(code: str, timeout: float) -> dict:
    """nanochat's outcome rules: any exception fails, MemoryError and the alarm are flagged."""
    def alarm(signum, frame):
        raise Timeout()

    signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        exec(code, {})
        return {"success": True}
    except Timeout:
        return {"timeout": True, "error": "Execution timed out"}
    except MemoryError as e:
        return {"memory_exceeded": True, "error": f"Memory limit exceeded: {e}"}
    except BaseException as e:
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def main() -> None:
    workdir, timeout, memory, nproc, fsize, result_fd = sys.argv[1:]
    code = sys.stdin.buffer.read().decode("utf-8", "replace")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.chdir(workdir)
    set_limits(float(timeout), int(memory), int(nproc), int(fsize))
    guard(os.path.realpath(workdir))
    outcome = run(code, float(timeout))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # the program may have closed or replaced it
            pass
    os.write(int(result_fd), json.dumps(outcome).encode())
    os._exit(0)


if __name__ == "__main__":
    main()
