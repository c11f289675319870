"""nanochat checkpoint interop (``nanochat_jax.convert``).

Why these tests: a converter that silently drops, transposes wrongly or
renames a tensor produces a model that loads fine and is quietly wrong. So
the checks are bitwise round trips through nanochat's on-disk format, a
simulation of nanochat's own strict loader on what we write, logits parity
of a loaded checkpoint against the PyTorch reference, and errors that name
every offending key.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from nanochat_jax import convert  # noqa: E402
from nanochat_jax.gpt import GPTConfig  # noqa: E402

from bench import torch_reference as tr  # noqa: E402

# GQA (4 query heads, 2 kv heads) and a vocab (300) that pads to 320.
TINY = dict(sequence_len=16, vocab_size=300, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
V = TINY["vocab_size"]


def torch_model(seed: int) -> "tr.GPT":
    m = tr.GPT(tr.GPTConfig(**TINY))
    m.init_weights()
    m.randomize_weights(seed=seed)  # nanochat zero-inits lm_head and c_proj; randomise everything
    with torch.no_grad():  # nanochat's checkpoints hold wte in bf16: keep it bf16-representable so round trips are bitwise
        m.transformer.wte.weight.copy_(m.transformer.wte.weight.bfloat16().float())
    return m.eval()


def write_nanochat_dir(directory: Path, step: int, state_dict: dict, meta: dict | None = None) -> None:
    """What nanochat's save_checkpoint leaves on disk for the model (rank 0's files)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, directory / f"model_{step:06d}.pt")
    meta = {"step": step, "val_bpb": 1.25, "model_config": dict(TINY), **(meta or {})}
    (directory / f"meta_{step:06d}.json").write_text(json.dumps(meta))


def nanochat_style_load(directory: Path, step: int) -> "tr.GPT":
    """nanochat's load_model path: meta-device build, to_empty, init_weights, strict assign."""
    meta = json.loads((directory / f"meta_{step:06d}.json").read_text())
    sd = torch.load(directory / f"model_{step:06d}.pt", map_location="cpu", weights_only=True)
    with torch.device("meta"):
        m = tr.GPT(tr.GPTConfig(**meta["model_config"]))
    m.to_empty(device="cpu")
    m.init_weights()
    m.load_state_dict(sd, strict=True, assign=True)
    return m.eval()


@nnx.jit
def jax_logits(model, idx):
    return model(idx)


def tokens(B: int, T: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, size=(B, T)).astype(np.int32)


@pytest.fixture(scope="module")
def ref():
    return torch_model(seed=42)


# --------------------------------------------------------------------------- mapping


def test_expected_shapes_are_nanochats(ref):
    got = convert.expected_torch_shapes(GPTConfig(**TINY))
    assert got == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert list(got) == list(ref.state_dict())  # same order as nanochat's state_dict too


def test_round_trip_bitwise_through_nanochat_directories(ref, tmp_path):
    src, out = tmp_path / "nanochat", tmp_path / "back"
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    write_nanochat_dir(src, 5, sd, {"user_config": {"depth": 2}})

    model, meta = convert.load_torch_checkpoint(src)
    assert model.config.model_config_dict() == TINY
    assert meta["step"] == 5 and meta["user_config"] == {"depth": 2}
    model_path, meta_path = convert.save_torch_checkpoint(model, meta, out, 5)

    assert sorted(p.name for p in out.iterdir()) == ["meta_000005.json", "model_000005.pt"]  # no temp leftovers
    back = torch.load(model_path, map_location="cpu", weights_only=True)
    assert list(back) == list(sd)
    for k, v in sd.items():
        want = torch.bfloat16 if k == convert.WTE_KEY else torch.float32  # nanochat's own checkpoint dtypes
        assert back[k].dtype == want, k
        assert back[k].shape == v.shape, k
        assert torch.equal(back[k].float(), v), k
        # Each tensor owns its storage (no views into one big stacked buffer).
        assert back[k].untyped_storage().nbytes() == v.numel() * back[k].element_size(), k
    meta_back = json.loads(meta_path.read_text())
    assert meta_back == {**meta, "model_config": TINY}

    # nanochat's own strict loader accepts it and computes the same logits (CPU, no autocast: wte upcast).
    loaded = nanochat_style_load(out, 5)
    assert loaded.transformer.wte.weight.dtype == torch.bfloat16
    loaded.transformer.wte.float()
    idx = torch.from_numpy(tokens(2, 16, seed=0)).long()
    with torch.no_grad():
        assert torch.equal(loaded(idx), ref(idx))


def test_loaded_model_logits_match_torch(ref, tmp_path):
    write_nanochat_dir(tmp_path, 10, ref.state_dict())
    model, _ = convert.load_torch_checkpoint(tmp_path)
    idx = tokens(2, 24, seed=3)  # longer than sequence_len: rotary rows past T
    with torch.no_grad():
        want = ref(torch.from_numpy(idx).long()).numpy()
    got = np.asarray(jax_logits(model, jnp.asarray(idx)))
    assert got.shape == want.shape == (2, 24, V)
    assert np.std(want) > 0.3
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_compiled_prefix_and_bf16_tensors_load(ref, tmp_path):
    """torch.compile'd modules save '_orig_mod.' keys; nanochat keeps wte in bf16 on CUDA."""
    sd = {f"_orig_mod.{k}": v.to(torch.bfloat16) for k, v in ref.state_dict().items()}
    write_nanochat_dir(tmp_path, 3, sd)
    model, _ = convert.load_torch_checkpoint(tmp_path)
    params = convert.model_params(model)
    assert all(np.asarray(x).dtype == np.float32 for x in (params["wte"], params["lm_head"]))
    np.testing.assert_array_equal(np.asarray(params["wte"]), ref.transformer.wte.weight.detach().bfloat16().float().numpy())
    back = convert.params_to_state_dict(params, model.config)
    for k, v in sd.items():
        np.testing.assert_array_equal(back[k.removeprefix("_orig_mod.")], v.float().numpy(), err_msg=k)


def test_config_overrides_pass_through(ref, tmp_path):
    write_nanochat_dir(tmp_path, 1, ref.state_dict())
    model, _ = convert.load_torch_checkpoint(tmp_path, compute_dtype="bfloat16", scan_layers=True, remat="full")
    cfg = model.config
    assert (cfg.compute_dtype, cfg.scan_layers, cfg.remat) == ("bfloat16", True, "full")
    assert cfg.model_config_dict() == TINY


def test_saved_meta_is_plain_json_and_model_config_wins(tmp_path):
    """numpy scalars (e.g. a val_bpb) serialise; a stale model_config is replaced by the model's."""
    cfg = GPTConfig(**TINY, scan_layers=True)  # execution switches never reach nanochat's meta
    params = convert.state_dict_to_params(
        {k: np.ones(s, np.float32) for k, s in convert.expected_torch_shapes(cfg).items()}, cfg
    )
    model = convert.build_model(cfg, params)
    meta = {"val_bpb": np.float32(0.5), "loop_state": {"seen": np.arange(2)}, "model_config": {"n_layer": 99}}
    _, meta_path = convert.save_torch_checkpoint(model, meta, tmp_path, 12)
    assert json.loads(meta_path.read_text()) == {"val_bpb": 0.5, "loop_state": {"seen": [0, 1]}, "model_config": TINY}


# --------------------------------------------------------------------------- steps


def test_latest_step_by_default_and_given_step_honoured(tmp_path):
    models = {step: torch_model(seed=step) for step in (100, 2000, 300)}
    for step, m in models.items():
        write_nanochat_dir(tmp_path, step, m.state_dict())
    (tmp_path / "optim_002000_rank0.pt").write_bytes(b"not a model file")  # ignored, like nanochat
    assert convert.available_steps(tmp_path) == [100, 300, 2000]

    def wte(model):
        return np.asarray(convert.model_params(model)["wte"])

    model, meta = convert.load_torch_checkpoint(tmp_path)
    assert meta["step"] == 2000
    np.testing.assert_array_equal(wte(model), models[2000].transformer.wte.weight.detach().numpy())
    model, meta = convert.load_torch_checkpoint(tmp_path, step=100)
    assert meta["step"] == 100
    np.testing.assert_array_equal(wte(model), models[100].transformer.wte.weight.detach().numpy())
    with pytest.raises(FileNotFoundError, match=r"model_000007\.pt.*\[100, 300, 2000\]"):
        convert.load_torch_checkpoint(tmp_path, step=7)


# --------------------------------------------------------------------------- errors


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert.load_torch_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"model_XXXXXX\.pt"):
        convert.load_torch_checkpoint(tmp_path)
    torch.save({}, tmp_path / "model_000004.pt")
    with pytest.raises(FileNotFoundError, match=r"meta_000004\.json"):
        convert.load_torch_checkpoint(tmp_path)


def test_missing_extra_and_misshaped_tensors_all_named(ref, tmp_path):
    sd = dict(ref.state_dict())
    del sd["transformer.h.1.mlp.c_fc.weight"]
    del sd["lm_head.weight"]
    sd["transformer.h.0.attn.c_k.weight"] = torch.zeros(64, 64)  # GQA: should be (32, 64)
    sd["transformer.wte.weight"] = torch.zeros(300, 64)  # unpadded vocab: should be (320, 64)
    sd["transformer.h.0.attn.bias"] = torch.zeros(3)
    write_nanochat_dir(tmp_path, 0, sd)
    with pytest.raises(ValueError) as info:
        convert.load_torch_checkpoint(tmp_path)
    msg = str(info.value)
    assert "missing 2" in msg
    assert "transformer.h.1.mlp.c_fc.weight: expected shape (256, 64)" in msg
    assert "lm_head.weight: expected shape (320, 64)" in msg
    assert "unexpected 1" in msg and "transformer.h.0.attn.bias: shape (3,)" in msg
    assert "transformer.h.0.attn.c_k.weight: expected (32, 64), got (64, 64)" in msg
    assert "transformer.wte.weight: expected (320, 64), got (300, 64)" in msg
    assert "post-classic" not in msg


def test_post_classic_tensors_flagged(ref, tmp_path):
    sd = dict(ref.state_dict())
    sd["value_embeds.1.weight"] = torch.zeros(320, 32)
    sd["transformer.h.1.attn.ve_gate.weight"] = torch.zeros(2, 12)
    sd["resid_lambdas"] = torch.ones(2)
    write_nanochat_dir(tmp_path, 0, sd)
    with pytest.raises(ValueError) as info:
        convert.load_torch_checkpoint(tmp_path)
    msg = str(info.value)
    for k in ("value_embeds.1.weight", "transformer.h.1.attn.ve_gate.weight", "resid_lambdas"):
        assert k in msg
    assert "post-classic nanochat checkpoint" in msg


def test_post_classic_meta_flagged(ref, tmp_path):
    write_nanochat_dir(tmp_path, 0, ref.state_dict(), {"model_config": {**TINY, "window_pattern": "SSSL"}})
    with pytest.raises(ValueError, match=r"window_pattern.*post-classic"):
        convert.load_torch_checkpoint(tmp_path)


def test_state_dict_to_params_rejects_before_touching_arrays():
    cfg = GPTConfig(**TINY)
    good = {k: np.zeros(s, np.float32) for k, s in convert.expected_torch_shapes(cfg).items()}
    params = convert.state_dict_to_params(good, cfg)
    assert params["h"]["attn_c_k"].shape == (2, 64, 32) and params["lm_head"].shape == (64, 320)
    bad = dict(good)
    bad["transformer.h.2.attn.c_q.weight"] = np.zeros((64, 64), np.float32)  # a third layer
    with pytest.raises(ValueError, match=r"transformer\.h\.2\.attn\.c_q\.weight"):
        convert.state_dict_to_params(bad, cfg)


# --------------------------------------------------------------------------- optional torch


def test_module_imports_without_torch():
    code = "import sys, nanochat_jax.convert; assert 'torch' not in sys.modules, 'torch imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_clear_message_when_torch_missing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'nanochat-jax\[torch\]'"):
        convert.load_torch_state_dict(tmp_path / "model_000000.pt")


# --------------------------------------------------------------------------- CLI


def test_cli_round_trip_through_project_checkpoint(ref, tmp_path):
    pytest.importorskip("nanochat_jax.checkpoint")
    src, proj, out = tmp_path / "nanochat", tmp_path / "project", tmp_path / "back"
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    write_nanochat_dir(src, 7, sd)
    write_nanochat_dir(src, 3, torch_model(seed=1).state_dict())
    convert.main(["to-jax", "--src", str(src), "--out", str(proj)])  # latest: step 7
    convert.main(["to-torch", "--src", str(proj), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["meta_000007.json", "model_000007.pt"]
    back = torch.load(out / "model_000007.pt", map_location="cpu", weights_only=True)
    assert list(back) == list(sd)
    assert back[convert.WTE_KEY].dtype == torch.bfloat16
    for k, v in sd.items():
        assert torch.equal(back[k].float(), v), k
    assert json.loads((out / "meta_000007.json").read_text())["model_config"] == TINY


def test_cli_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nanochat_jax.convert", "to-jax", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "out")],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert re.fullmatch(r"error: .*nope.* does not exist\n", proc.stderr), proc.stderr
