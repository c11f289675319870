"""The code sandbox: HumanEval's own solutions pass, broken ones fail, hostile programs stay contained.

Each hostile program (tests/hostile/*.tmpl) runs in every mode this machine has. In
"rlimits" mode it takes only the routes the Python guard covers; in "namespaces" mode
it also walks past the guard (ctypes, _io, _socket), so what stops it there is the OS.
The corpus runs in tests/hostile/runner.py, inside a PID namespace of its own when the
machine allows, and every bomb in it is bounded by construction.
"""

import gzip
import json
import os
import shutil
import socket
import string
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nanochat_jax.execution import GRACE_S, OUTPUT_CAP, PROCESS_LIMIT, execute_code, isolation_mode
from nanochat_jax.tasks import HumanEval

REPO = Path(__file__).resolve().parent.parent
HOSTILE = Path(__file__).resolve().parent / "hostile"
MODES = ["rlimits"] + (["namespaces"] if isolation_mode() == "namespaces" else [])
TIMEOUT = 1.0
SECRET = "nanochat-test-secret-7f3a9c"
CANARY_TEXT = "canary: must not change"
# Deliberate off-by-one bugs in canonical solutions: (task id, original, replacement).
OFF_BY_ONE = [
    ("HumanEval/3", "balance < 0", "balance <= 0"),  # [1, -1] never goes below zero
    ("HumanEval/23", "return len(string)", "return len(string) - 1"),
    ("HumanEval/42", "(e + 1)", "(e + 2)"),
    ("HumanEval/60", "sum(range(n + 1))", "sum(range(n))"),
    ("HumanEval/85", "range(1, len(lst), 2)", "range(0, len(lst), 2)"),
]


def run_all(jobs, mode=None):
    """(conversation, completion) pairs through the sandbox, in parallel threads."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda job: execute_code(HumanEval.program(*job), isolation=mode), jobs))


@pytest.fixture(scope="module")
def humaneval():
    """The task's 164 conversations, and the raw rows by task id (the task drops the id)."""
    task = HumanEval(data_dir="embedded")
    conversations = [task[i] for i in range(len(task))]
    with gzip.open(REPO / "nanochat_jax/data/chat/humaneval/openai_humaneval/test.jsonl.gz", "rt") as f:
        rows = {row["task_id"]: row for row in map(json.loads, f)}
    return task, conversations, rows


@pytest.mark.parametrize("mode", MODES)
def test_canonical_solutions_pass(humaneval, mode):
    _, conversations, _ = humaneval
    assert len(conversations) == 164
    results = run_all([(c, c["messages"][1]["content"]) for c in conversations], mode)
    assert not [(c["entry_point"], r) for c, r in zip(conversations, results) if not r.success]


def test_broken_solutions_fail(humaneval):
    task, conversations, rows = humaneval
    by_prompt = {c["messages"][0]["content"]: c for c in conversations}
    jobs = [(c, c["messages"][0]["content"].rstrip() + "\n    return None\n") for c in conversations]
    for task_id, old, new in OFF_BY_ONE:
        row = rows[task_id]
        assert row["canonical_solution"].count(old) == 1, task_id
        jobs.append((by_prompt[row["prompt"]], row["prompt"] + row["canonical_solution"].replace(old, new)))
    results = run_all(jobs)
    assert len(results) == 164 + len(OFF_BY_ONE)
    assert not [job[0]["entry_point"] for job, r in zip(jobs, results) if r.success]
    # They fail in their own tests, not by hitting a limit or losing the result.
    assert not [r for r in results if r.timeout or r.memory_exceeded or not r.error or "no result" in r.error]
    conversation, broken = jobs[-1]
    assert not task.evaluate(conversation, broken)  # the task scores through the same sandbox
    assert task.evaluate(conversation, conversation["messages"][1]["content"])


@pytest.mark.parametrize("mode", MODES)
def test_outcomes_and_capture(mode):
    run = lambda code, **kw: execute_code(code, timeout=TIMEOUT, isolation=mode, **kw)  # noqa: E731
    ok = run("import sys\nprint('out', 6 * 7)\nsys.stderr.write('err\\n')")
    assert (ok.success, ok.stdout, ok.stderr, ok.error, ok.timeout, ok.memory_exceeded) == (True, "out 42\n", "err\n", None, False, False)
    assert run("raise ValueError('boom')").error == "ValueError: boom"
    assert run("import sys\nsys.exit(0)").error == "SystemExit: 0"  # exiting early is no pass
    quit_early = run("import os\nos._exit(0)")
    assert not quit_early.success and "no result" in quit_early.error
    assert run("print(1 +)").error.startswith("SyntaxError")
    first = run("open('left.txt', 'w').write('x')\nimport os\nprint(sorted(os.listdir('.')))")
    second = run("import os\nprint(sorted(os.listdir('.')))")
    assert (first.stdout, second.stdout) == ("['left.txt']\n", "[]\n")  # a fresh work dir every run
    big = "x = bytearray(400 * 2**20)\nx[-1] = 1"
    # Unlimited: 400 MB are zero-filled page by page, which can take over a second on a busy 2-core box.
    assert run(big).memory_exceeded and execute_code(big, timeout=15.0, maximum_memory_bytes=None, isolation=mode).success
    with pytest.raises(ValueError, match="isolation"):
        execute_code("pass", isolation="docker")


def test_isolation_mode_is_stable():
    assert isolation_mode() in ("namespaces", "rlimits") and isolation_mode() == MODES[-1]


# ---------------------------------------------------------------- hostile corpus

def outer_namespace() -> list[str]:
    """A PID namespace for the corpus runner, when this machine gives one (root or user namespaces)."""
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    argv = ["unshare", *user, "--pid", "--fork", "--mount-proc", "--kill-child"]
    if shutil.which("unshare") and subprocess.run([*argv, "true"], capture_output=True).returncode == 0:
        return argv
    return []


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Run the corpus once per mode (modes in parallel); per mode: results by name, canary dir, runner facts."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    prefix, procs, dirs = outer_namespace(), {}, {}
    for mode in MODES:
        root = tmp_path_factory.mktemp(f"hostile-{mode}")
        (root / "canary").mkdir()
        (root / "canary" / "canary.txt").write_text(CANARY_TEXT)
        (root / "tmp").mkdir()
        values = {"canary": root / "canary" / "canary.txt", "canary_dir": root / "canary", "port": listener.getsockname()[1],
                  "bypass": mode == "namespaces", "runner_pid": "$runner_pid"}  # the runner fills its pid in
        corpus = [{"name": p.stem, "timeout": TIMEOUT, "code": string.Template(p.read_text()).substitute(values)}
                  for p in sorted(HOSTILE.glob("*.tmpl"))]
        (root / "corpus.json").write_text(json.dumps(corpus))
        env = {**os.environ, "NANOCHAT_TEST_SECRET": SECRET, "PYTHONPATH": str(REPO), "TMPDIR": str(root / "tmp")}
        argv = [*prefix, "timeout", "120", sys.executable, str(HOSTILE / "runner.py"), mode, str(root / "corpus.json")]
        procs[mode] = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        dirs[mode] = root
    out = {}
    for mode, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=150)
        results = {r["name"]: r for r in map(json.loads, stdout.splitlines())}
        out[mode] = {"results": results, "dir": dirs[mode], "returncode": proc.returncode, "stderr": stderr,
                     "names": sorted(p.stem for p in HOSTILE.glob("*.tmpl")), "namespaced": bool(prefix)}
    try:
        listener.accept()
        out["connections"] = 1
    except BlockingIOError:
        out["connections"] = 0
    listener.close()
    return out


def outcome(hostile, mode, name):
    return hostile[mode]["results"][name]


def assert_canary_intact(hostile, mode):
    canary = hostile[mode]["dir"] / "canary"
    assert sorted(p.name for p in canary.iterdir()) == ["canary.txt"]
    assert (canary / "canary.txt").read_text() == CANARY_TEXT


@pytest.mark.parametrize("mode", MODES)
def test_runner_survived_every_program(hostile, mode):
    run = hostile[mode]
    assert run["namespaced"] or os.geteuid() != 0  # as root the corpus must run in its own PID namespace
    assert run["returncode"] == 0, run["stderr"]
    assert sorted(run["results"]) == run["names"]  # kill_parent included: the runner went on to the end
    assert not [name for name, r in run["results"].items() if r["leftover"]]  # nothing outlived its run
    assert not list((run["dir"] / "tmp").iterdir())  # every work dir was deleted


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["write_outside", "delete_outside", "shell_out"])
def test_files_outside_are_untouched(hostile, mode, name):
    assert "done" in outcome(hostile, mode, name)["stdout"]  # it got through every attempt
    assert_canary_intact(hostile, mode)


def test_no_network(hostile):
    assert hostile["connections"] == 0
    for mode in MODES:
        r = outcome(hostile, mode, "network")
        assert "done" in r["stdout"] and "connected" not in r["stdout"]


@pytest.mark.parametrize("mode", MODES)
def test_no_secrets(hostile, mode):
    r = outcome(hostile, mode, "env_secret")
    assert r["success"] and "environ:" in r["stdout"]
    assert SECRET not in r["stdout"] + r["stderr"]


@pytest.mark.parametrize("mode", MODES)
def test_loops_are_stopped(hostile, mode):
    polite, stubborn = outcome(hostile, mode, "infinite_loop"), outcome(hostile, mode, "stubborn_loop")
    assert polite["timeout"] and polite["error"] == "Execution timed out" and polite["wall"] < TIMEOUT + 1.5
    assert stubborn["timeout"] and "killed" in stubborn["error"] and stubborn["wall"] < TIMEOUT + GRACE_S + 1.5


@pytest.mark.parametrize("mode", MODES)
def test_memory_and_output_are_capped(hostile, mode):
    bomb, flood = outcome(hostile, mode, "memory_bomb"), outcome(hostile, mode, "output_flood")
    assert bomb["memory_exceeded"] and not bomb["success"] and "allocated" not in bomb["stdout"]
    assert not flood["success"] and len(flood["stdout"]) == OUTPUT_CAP and "done" not in flood["stdout"]


@pytest.mark.parametrize("mode", MODES)
def test_process_count_is_bounded(hostile, mode):
    bomb, daemon = outcome(hostile, mode, "fork_bomb"), outcome(hostile, mode, "outlive")
    started = int(bomb["stdout"].split("started ")[1].split()[0])
    if mode == "namespaces":  # forks past the guard: the kernel's RLIMIT_NPROC stops them
        assert 0 < started < PROCESS_LIMIT
        assert "heartbeat seen: True" in daemon["stdout"]  # the daemon really ran, and then died with the run
    else:
        assert started == 0 and "fork: TypeError" in daemon["stdout"]
    assert bomb["leftover"] == daemon["leftover"] == 0


def test_fallback_warns_once():
    script = ("import nanochat_jax.execution as ex\nex.TOOLS = ('no-such-tool',)\n"
              "print(ex.isolation_mode(), ex.isolation_mode(), ex.execute_code('print(1)').stdout.strip())")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.stdout.split() == ["rlimits", "rlimits", "1"]
    assert proc.stderr.count("WARNING") == 1 and "rlimits" in proc.stderr
