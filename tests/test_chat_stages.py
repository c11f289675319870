"""train.mid and train.sft end to end on the embedded chat data: exact resume, chat from the result, bad input.

A d1 base model (64 wide, seq 64, one row per device on the 8 host CPU devices) is
pretrained once for the module; mid and SFT then continue it for a few steps.
"""

import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from nanochat_jax import checkpoint
from nanochat_jax.config import parse_args
from train import mid, pretrain, sft

BASE = ["--config=configs/tiny.py", "--config.model.depth=1", "--config.model.max_seq_len=64",
        "--config.loop.device_batch_size=1", "--config.loop.total_batch_size=512", "--config.loop.num_iterations=2",
        "--config.data.tokenizer_vocab_size=320", "--config.data.tokenizer_max_chars=300000", "--config.loop.eval_every=-1",
        "--config.loop.sample_every=-1", "--config.loop.save_every=-1", "--config.loop.model_tag=t", "--config.loop.core_metric_every=-1",
        "--config.data.tokenizer_threads=1", "--config.log.tensorboard=False"]  # fmt: skip
COMMON = ["--config.model.max_seq_len=64", "--config.loop.device_batch_size=1", "--config.loop.num_iterations=6",
          "--config.loop.eval_every=3", "--config.log.tensorboard=False", "--config.log.log_every=1"]  # fmt: skip


def mid_args(tag, **loop):
    extra = [f"--config.loop.{k}={v}" for k, v in loop.items()]
    return parse_args(["--config=configs/tiny_mid.py", "--config.source.model_tag=t", "--config.loop.total_batch_size=512",
                       "--config.loop.eval_tokens=512", f"--config.loop.model_tag={tag}", *COMMON, *extra])  # fmt: skip


def sft_args(tag, **loop):
    extra = [f"--config.loop.{k}={v}" for k, v in loop.items()]
    return parse_args(["--config=configs/tiny_sft.py", "--config.source.model_tag=m", "--config.loop.target_examples_per_step=16",
                       "--config.loop.eval_steps=2", f"--config.loop.model_tag={tag}", *COMMON, *extra])  # fmt: skip


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("chat_stages")
    mp.setenv("NANOCHAT_JAX_BASE_DIR", str(root))
    pretrain.run(parse_args(BASE))
    mid.run(mid_args("m"))
    yield root
    mp.undo()


def params_of(root, stage, tag):
    model, meta = checkpoint.load_model_checkpoint(root / checkpoint.STAGE_DIRS[stage] / tag)
    return jax.tree.leaves(nnx.state(model, nnx.Param)), meta


@pytest.mark.parametrize("stage,make", [("mid", mid_args), ("sft", sft_args)])
def test_interrupted_and_resumed_run_ends_bit_identical(base_dir, stage, make):
    run = {"mid": mid.run, "sft": sft.run}[stage]
    full = run(make("full"))
    run(make("half", save_every=3))
    half_dir = base_dir / checkpoint.STAGE_DIRS[stage] / "half"
    shutil.rmtree(half_dir / "6")  # keep only the mid-run checkpoint
    resumed = run(make("half", save_every=3, resume=True))
    assert resumed["iterations"] == full["iterations"] == 6
    key = "final_val_bpb" if stage == "mid" else "final_val_loss"
    assert resumed[key] == full[key] and np.isfinite(full[key])
    (a, meta), (b, _) = params_of(base_dir, stage, "full"), params_of(base_dir, stage, "half")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert meta["stage"] == stage and meta["source"].startswith({"mid": "base/t/", "sft": "mid/m/"}[stage])
    if stage == "sft":  # padded rows: one compiled step program per length bucket in use
        assert full["compiled_programs"] == 1  # every row fits the one bucket of 64 tokens


def test_the_chat_cli_talks_to_the_sft_model(base_dir, capsys):
    sft.run(sft_args("chat"))
    from nanochat_jax import chat

    capsys.readouterr()
    assert chat.main(["-i", "sft", "-g", "chat", "-p", "What is 2 plus 3?", "-t", "0", "-m", "4"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_missing_source_checkpoint_says_what_to_run_first(base_dir):
    with pytest.raises(checkpoint.CheckpointNotFoundError, match=r"no mid checkpoint 'nope'.*python -m train.mid"):
        sft.run(parse_args(["--config=configs/tiny_sft.py", "--config.source.model_tag=nope", *COMMON]))
    with pytest.raises(ValueError, match="unknown task mixture 'nothing'"):
        mid.run(parse_args(["--config=configs/tiny_mid.py", "--config.source.model_tag=t", "--config.data.train=nothing", *COMMON]))
