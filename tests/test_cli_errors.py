"""Entry points report the project's own errors as one ``error: ...`` line on stderr, exit status 2, no traceback.

The shared path (``cli.main``) is tested in-process; then every entry point
once as a real ``python -m`` subprocess with an error that happens before any
heavy work (all run concurrently to keep the file fast).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nanochat_jax import checkpoint, cli
from nanochat_jax.config import ConfigError
from nanochat_jax.errors import CheckpointCorruptError

ROOT = Path(__file__).resolve().parents[1]


def run_main(fn, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(fn)
    return info.value.code, capsys.readouterr().err


def raiser(e):
    def fn():
        raise e

    return fn


def test_project_errors_become_one_line(capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    for error in (ConfigError("unknown config field 'deptj'"), CheckpointCorruptError("step 3 is corrupt:\n  wte"), SystemExit("bad flag")):
        code, err = run_main(raiser(error), capsys)
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert run_main(raiser(CheckpointCorruptError("step 3 is corrupt:\n  wte")), capsys)[1] == "error: step 3 is corrupt: wte\n"
    code, err = run_main(lambda: checkpoint.stage_dir("nope"), capsys)  # a ValueError raised by the package itself
    assert code == 2 and err.startswith("error: unknown stage 'nope'"), err
    with pytest.raises(ValueError, match="outside the package"):  # the same type raised elsewhere is a bug: traceback
        cli.main(raiser(ValueError("outside the package")))


def test_library_errors_and_debug_keep_the_traceback(capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    with pytest.raises(ValueError, match="negative dimensions"):
        cli.main(lambda: np.zeros(-1))  # raised inside numpy: a bug, not a user error
    with pytest.raises(KeyError):
        cli.main(raiser(KeyError("x")))
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(ConfigError):
        cli.main(raiser(ConfigError("shown with its traceback")))
    assert capsys.readouterr().err == ""


def test_success_and_argparse_exits_pass_through(capsys):
    cli.main(lambda: 3)
    with pytest.raises(SystemExit) as info:
        cli.main(raiser(SystemExit(0)))
    assert info.value.code == 0 and capsys.readouterr().err == ""


CASES = {
    "pretrain unknown field": (["train.pretrain", "--config=configs/tiny.py", "--config.deptj=3"],
                               "unknown config field 'deptj'.*model.depth"),
    "pretrain wrong type": (["train.pretrain", "--config=configs/tiny.py", "--config.model.depth=abc"], "model.depth=abc.*expected int"),
    "pretrain missing config": (["train.pretrain", "--config=configs/nope.py"], "config file configs/nope.py not found"),
    "mid": (["train.mid", "--config=configs/tiny_mid.py", "--config.depth=3"], "unknown config field 'depth'"),
    "sft": (["train.sft", "--config=configs/tiny_sft.py", "--config.loop.nope=1"], "unknown config field 'loop.nope'"),
    "rl": (["train.rl", "--config=configs/tiny_rl.py", "--config.deptj=3"], "unknown config field 'deptj'"),
    "tokenizer": (["train.tokenizer", "--config=configs/tiny.py", "--config.data.tokenizer_vocab=3"],
                  "unknown config field 'data.tokenizer_vocab'.*data.tokenizer_vocab_size"),
    "pipeline": (["train.pipeline", "--config=configs/nope.py"], "config file configs/nope.py not found"),
    "base_eval": (["train.base_eval", "-g", "nope"], "no base checkpoint 'nope' under .*python -m train.pretrain"),
    "chat_eval": (["train.chat_eval", "-i", "sft", "-g", "nope"], "no sft checkpoint 'nope' under .*python -m train.sft"),
    "chat": (["nanochat_jax.chat", "-i", "base", "-p", "hi"], "no base checkpoints under .*python -m train.pretrain"),
    "serve": (["nanochat_jax.serve", "-i", "mid"], "no mid checkpoints under .*--demo"),
    "convert": (["nanochat_jax.convert", "to-jax", "--src", "nope", "--out", "out"], "nope.* does not exist"),
}


@pytest.fixture(scope="module")
def procs(tmp_path_factory):
    base = tmp_path_factory.mktemp("base")
    env = {**os.environ, "NANOCHAT_JAX_BASE_DIR": str(base), "JAX_PLATFORMS": "cpu"}
    env.pop(cli.DEBUG_ENV, None)

    def start(argv, env):
        return subprocess.Popen([sys.executable, "-m", *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    running = {name: start(argv, env) for name, (argv, _) in CASES.items()}
    debug = start(["train.pretrain", "--config=configs/nope.py"], {**env, cli.DEBUG_ENV: "1"})
    out = {name: (p.wait(timeout=300), *p.communicate()) for name, p in running.items()}
    out["debug"] = (debug.wait(timeout=300), *debug.communicate())
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_entry_point_reports_one_line(procs, name):
    code, stdout, stderr = procs[name]
    assert code == 2, (stdout, stderr)
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip() and "WARNING" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert re.search(CASES[name][1], lines[0]), lines[0]


def test_debug_variable_shows_the_traceback(procs):
    code, _, stderr = procs["debug"]
    assert code == 1 and "Traceback" in stderr and "ConfigError" in stderr and "nope.py not found" in stderr
