"""train.base_eval end to end on a random checkpoint: CORE on the slice, bpb on the sample corpus, samples, files."""

import json

import pytest
from model_helpers import random_gpt

from nanochat_jax import results
from nanochat_jax.checkpoint import save_model_checkpoint
from nanochat_jax.dataset import parquet_files_for_split
from nanochat_jax.gpt import GPTConfig
from nanochat_jax.tokenizer import Tokenizer
from train import base_eval
from train.pretrain import SAMPLE_PROMPTS
from train.tokenizer import iter_train_texts


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOCHAT_JAX_BASE_DIR", str(tmp_path))
    tok = Tokenizer.train_from_iterator(iter_train_texts(parquet_files_for_split("train", "sample"), 50_000, 10_000), 300)
    tok_dir = tmp_path / "tok"
    tok.save(tok_dir)
    model = random_gpt(GPTConfig(sequence_len=64, vocab_size=tok.get_vocab_size(), n_layer=1, n_head=1, n_kv_head=1, n_embd=32))
    save_model_checkpoint(model, {"tokenizer_dir": str(tok_dir), "data_dir": "sample"}, tmp_path / "base_checkpoints" / "d1", step=7)
    return tmp_path


def test_all_three_evaluations_write_results_and_report(checkpoint, capsys):
    out = base_eval.main(["-i", "base", "-g", "d1", "--max_per_task", "11", "--bundle_dir", "slice",
                          "--split_tokens", "1024", "--device_batch_size", "2"])  # fmt: skip
    core = results.load_results("base", "d1", "core")
    assert core["step"] == 7 and core["slice"] is True and len(core["results"]) == 10
    assert core["core_metric"] == pytest.approx(sum(core["centered_results"].values()) / 10)
    for label, acc in core["results"].items():
        assert 0 <= acc <= 1 and core["centered_results"][label] <= 1
    bpb = results.load_results("base", "d1", "bpb")
    assert 0 < bpb["train_bpb"] < 20 and 0 < bpb["val_bpb"] < 20 and bpb["split_tokens"] == 1024  # 8 devices x 2 rows x 64
    assert [s[: len(p)] for s, p in zip(out["samples"], SAMPLE_PROMPTS)] == list(SAMPLE_PROMPTS)
    report = (checkpoint / "report" / "base-model-evaluation.md").read_text()
    assert "CORE (embedded slice" in report and "hellaswag_zeroshot" in report
    loss = (checkpoint / "report" / "base-model-loss.md").read_text()
    assert f"- val bpb: {bpb['val_bpb']:.4f}" in loss and "- sample 6: If 5*x + 3 = 13, then x is" in loss
    assert "CORE (embedded slice: not comparable to CORE)" in capsys.readouterr().out
    json.dumps(out)  # the returned summary is plain data


def test_bad_flags_are_one_clear_error(checkpoint, capsys):
    with pytest.raises(SystemExit) as e:
        base_eval.cli.main(lambda: base_eval.main(["-g", "d1", "--eval", "core,loss"]))
    assert e.value.code == 2 and "--eval: unknown evaluation(s) ['loss']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        base_eval.cli.main(lambda: base_eval.main(["-g", "d1", "--eval", "core", "--bundle_dir", str(checkpoint / "none")]))
    assert f"{checkpoint / 'none' / 'core.yaml'} not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        base_eval.cli.main(lambda: base_eval.main(["-g", "d1", "--eval", "bpb", "--split_tokens", "10"]))
    assert "--split_tokens=10 is less than one batch" in capsys.readouterr().err
