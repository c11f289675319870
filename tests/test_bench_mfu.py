"""The JAX-vs-PyTorch MFU harness: its PyTorch baseline is the same model, and it runs.

Why these tests: a throughput ratio is only meaningful if both sides train
the same thing. The PyTorch baseline's model is ``bench/torch_reference.py``,
whose logits ``tests/test_gpt.py`` checks against JAX; here the baseline's own
training step (stacked Muon, fused-style AdamW, accumulation, clipping) must
move the loss exactly as the JAX step does, on fully random weights (nanochat
zero-inits lm_head and both c_proj, which would hide whole sub-networks),
with GQA and a padded vocab. Then ``python -m bench.mfu`` runs end to end on CPU for both
frameworks, and its ``--nanochat`` path is driven through a fake nanochat
package that records what the harness asked of it.

Tolerances: losses after Muon steps differ only through the bf16 Newton-Schulz, whose
two implementations can round differently (tests/test_optim.py measures up
to ~2% per update): 1e-3 relative on the loss. Updates: 4% rel. Frobenius,
test_optim.py's NS bound.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from bench import mfu, step  # noqa: E402
from bench import torch_nanochat as tn  # noqa: E402
from nanochat_jax import convert, hardware, sharding  # noqa: E402
from nanochat_jax.gpt import GPTConfig  # noqa: E402
from nanochat_jax.optim import nanochat_optimizer  # noqa: E402
from nanochat_jax.train_step import init_train_state, make_train_step  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

TINY = dict(sequence_len=16, vocab_size=300, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)  # GQA, vocab 300 -> 320
NS_RTOL = 0.04
LOSS_RTOL = 1e-3


def random_torch_model(seed: int = 0) -> "tn.GPT":
    """The bench model with every weight random (the parity tests' ``randomize_weights``)."""
    model = tn.GPT(tn.GPTConfig(**TINY))
    model.init_weights()
    model.randomize_weights(seed=seed)
    return model


def state_dict_numpy(model) -> dict:
    return {k: v.detach().float().numpy().copy() for k, v in model.state_dict().items()}


def jax_model_from(model, **kw):
    cfg = GPTConfig(**TINY, **kw)
    return convert.build_model(cfg, convert.state_dict_to_params(state_dict_numpy(model), cfg))


def tokens(shape, seed, vocab=TINY["vocab_size"]):
    return np.random.default_rng(seed).integers(0, vocab, size=shape).astype(np.int32)


# --------------------------------------------------------------------------- optimizer-step parity


def test_newton_schulz_batched_equals_per_matrix():
    """Stacking same-shape matrices must not change any matrix's orthogonalisation."""
    G = torch.randn(3, 48, 80, generator=torch.Generator().manual_seed(0))
    batched = tn.newton_schulz(G).float()
    for i in range(3):
        single = tn.newton_schulz(G[i]).float()
        assert (torch.linalg.norm(batched[i] - single) / torch.linalg.norm(single)) < 0.02
    tall = tn.newton_schulz(G.mT).float()  # tall input: transposed inside, result back in the input's orientation
    assert tall.shape == (3, 80, 48)
    s = torch.linalg.svdvals(tall.double())
    assert 0.6 < s.min() and s.max() < 1.25


def _rel_fro(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_optimizer_steps_move_loss_the_same_way():
    """Three steps (grad accumulation 2, clip on, scheduled lr/momentum): JAX vs bench torch."""
    model = random_torch_model(seed=3)
    jmodel = jax_model_from(model)
    before = state_dict_numpy(model)
    x = tokens((2, 3, 16), seed=4)
    y = tokens((2, 3, 16), seed=5)
    hypers = [(1.0, 0.85), (0.7, 0.9), (0.4, 0.95)]

    trainer = tn.Trainer(model, tn.setup_optimizers(model), grad_clip=1.0)
    assert isinstance(trainer.optimizers[0], torch.optim.AdamW) and isinstance(trainer.optimizers[1], tn.Muon)
    xt, yt = torch.from_numpy(x).long(), torch.from_numpy(y).long()
    t_losses, t_norms = [], []
    for lrm, mom in hypers:
        t_losses.append(float(trainer.train_step(xt, yt, lr_multiplier=lrm, muon_momentum=mom)))
        t_norms.append(float(trainer.last_grad_norm))
        if len(t_losses) == 1:
            after_one = state_dict_numpy(model)
    with torch.no_grad():
        t_losses.append(float(sum(model(xt[i], yt[i]) for i in range(2)) / 2))

    mesh = sharding.make_mesh(jax.devices()[:1])
    cfg = GPTConfig(**TINY)
    tx = nanochat_optimizer(cfg, mesh=mesh, shard_muon=False)
    graphdef, state, shardings = init_train_state(jmodel, tx, mesh, shard_muon=False)
    step = make_train_step(graphdef, tx, shardings, mesh, grad_clip=1.0)
    xj, yj = sharding.make_global_microbatches(x, mesh), sharding.make_global_microbatches(y, mesh)
    j_losses, j_norms = [], []
    for lrm, mom in hypers + [(0.0, 0.95)]:  # the last call only reads the loss after three updates
        state, metrics = step(state, {"inputs": xj, "targets": yj}, np.float32(lrm), np.float32(mom))
        j_losses.append(float(metrics["loss"]))
        j_norms.append(float(metrics["grad_norm"]))
        if len(j_losses) == 1:
            j_after_one = convert.params_to_state_dict(jax.device_get(state.params), cfg)

    assert t_norms[0] > 1.0  # clipping is active, so both clip implementations are exercised
    assert abs(j_losses[0] - t_losses[0]) <= 1e-5 * t_losses[0]  # same params, same batch: same loss
    assert abs(j_norms[0] - t_norms[0]) <= 1e-4 * t_norms[0]
    np.testing.assert_allclose(j_losses, t_losses, rtol=LOSS_RTOL)
    assert t_losses[-1] < t_losses[0] - 0.1  # the steps really moved the loss
    for key in before:
        dt_ = after_one[key] - before[key]
        dj = j_after_one[key] - before[key]
        assert np.linalg.norm(dt_) > 0, key
        tol = NS_RTOL if ".h." in key else 1e-3
        assert _rel_fro(dj, dt_) < tol, (key, _rel_fro(dj, dt_))


def test_build_trainer_defaults_follow_the_device():
    trainer = tn.build_trainer(tn.GPTConfig(**TINY), "cpu")
    assert trainer.autocast_dtype is None and trainer.forward is trainer.model  # fp32, eager on CPU
    assert trainer.model.transformer.wte.weight.dtype == torch.float32
    assert not trainer.model.lm_head.weight.any()  # nanochat init: zero lm_head
    adamw, muon = trainer.optimizers
    scale = (TINY["n_embd"] / 768) ** -0.5
    assert [g["lr"] for g in adamw.param_groups] == pytest.approx([0.004 * scale, 0.2 * scale])
    assert adamw.defaults["betas"] == (0.8, 0.95) and adamw.defaults["eps"] == 1e-10
    shapes = sorted(tuple(g["params"][0].shape) for g in muon.param_groups)
    assert shapes == [(32, 64), (64, 64), (64, 256), (256, 64)]  # c_k/c_v, c_q/c_proj, mlp c_proj, c_fc
    assert all(g["lr"] == 0.02 for g in muon.param_groups)


def test_jax_step_matmuls_take_bf16_operands():
    """NOTES.md item "bf16 operands for every matmul", checked on the lowered step (no GPU needed).

    fp32 dots run at best at TF32 speed on an H100. In the bf16 train step
    every dot_general (model, loss, backward, Muon's Newton-Schulz) must have
    bf16 operands; the one allowed exception is the XLA attention fallback's
    probabilities x V (fp32 softmax output), which cuDNN attention replaces.
    """
    import re

    B, T = 2, 32  # T != head_dim (16), so a (B, H, T, T) probability tensor is recognisable by size
    cfg = GPTConfig(**{**TINY, "sequence_len": T}, compute_dtype="bfloat16", attention_impl="xla")
    mesh = sharding.make_mesh(jax.devices()[:1])
    tx = nanochat_optimizer(cfg, mesh=mesh, shard_muon=False)
    from nanochat_jax.gpt import GPT

    graphdef, state, shardings = init_train_state(GPT(cfg, rngs=nnx.Rngs(0)), tx, mesh, shard_muon=False)
    step = make_train_step(graphdef, tx, shardings, mesh, grad_clip=1.0)
    x = sharding.make_global_microbatches(np.zeros((1, B, T), np.int32), mesh)
    text = step.lower(state, {"inputs": x, "targets": x}, np.float32(1), np.float32(0.95)).as_text()
    dots = re.findall(r"stablehlo\.dot_general.*?:\s*\((tensor<[^>]*>),\s*(tensor<[^>]*>)\)", text)
    assert len(dots) > 20

    def dtype(t):
        return t.rsplit("x", 1)[-1].rstrip(">")

    def numel(t):
        return math.prod(int(d) for d in t[len("tensor<"):].split("x")[:-1])

    not_bf16 = [(a, b) for a, b in dots if dtype(a) != "bf16" or dtype(b) != "bf16"]
    for a, b in not_bf16:  # attention probabilities (fp32) x values (bf16), nothing else
        assert dtype(a) == "f32" and dtype(b) == "bf16" and numel(a) == B * TINY["n_head"] * T * T, (a, b)
    assert len(not_bf16) <= 2 * TINY["n_layer"]


# --------------------------------------------------------------------------- harness pieces (in-process)


def test_worker_env_gpu_defaults_and_opt_out():
    base = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_dump_to=/tmp/x", "CUDA_VISIBLE_DEVICES": "3,5"}
    env = mfu.worker_env("jax", "gpu", gpu_index=1, base=base)
    assert env["CUDA_VISIBLE_DEVICES"] == "5"
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.92" and env["JAX_OPTIMIZATION_LEVEL"] == "O1"
    flags = env["XLA_FLAGS"].split()
    assert "--xla_gpu_enable_triton_gemm=false" in flags and "--xla_dump_to=/tmp/x" in flags
    assert not any("force_host_platform" in f for f in flags)
    off = mfu.worker_env("jax", "gpu", base=base, xla_flags=False)
    assert "JAX_OPTIMIZATION_LEVEL" not in off and "triton_gemm" not in off["XLA_FLAGS"]
    mine = mfu.worker_env("jax", "gpu", base={"XLA_FLAGS": "--xla_gpu_enable_triton_gemm=true",
                                              "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.5"})
    assert mine["XLA_FLAGS"].split() == ["--xla_gpu_enable_triton_gemm=true", "--xla_gpu_enable_latency_hiding_scheduler=true"]
    assert mine["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.5"  # the user's explicit value wins
    t = mfu.worker_env("torch", "gpu", base={})
    assert "expandable_segments:True" in (t.get("PYTORCH_ALLOC_CONF", "") + t.get("PYTORCH_CUDA_ALLOC_CONF", ""))
    cpu = mfu.worker_env("jax", "cpu", base={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert cpu["JAX_PLATFORMS"] == "cpu" and "XLA_FLAGS" not in cpu and "CUDA_VISIBLE_DEVICES" not in cpu
    assert str(REPO) in cpu["PYTHONPATH"].split(":")


def test_table_marks_failures_and_missing_peak():
    args = mfu.parse_args(["--depth", "1", "--vocab_size", "256", "--seq_len", "64", "--device_batch_size", "2"])
    rows = [
        {"framework": "jax", "device": "NVIDIA H100 80GB HBM3", "num_devices": 1, "params": 81920, "step_ms": 1.0,
         "tokens_per_s": 1e6, "peak_mem_gib": 1.5, "compile_s": 3.0, "loss": 5.0},
        {"framework": "torch", "error": "OutOfMemoryError: CUDA out of memory"},
    ]
    facts = mfu.add_mfu(rows, args)
    assert rows[0]["mfu"] == pytest.approx(1e6 * facts["flops_per_token"] / 989e12)
    text = mfu.format_table(rows, facts, args, "gpu")
    assert "| torch | failed: OutOfMemoryError" in text and "JAX / PyTorch tokens/s: n/a" in text
    assert hardware.peak_flops("cpu") is None


def test_rounds_report_each_ratio_and_their_median():
    args = mfu.parse_args(["--depth", "1", "--vocab_size", "256", "--seq_len", "64", "--rounds", "3"])
    speeds = [(100.0, 80.0), (90.0, 100.0), (120.0, None)]  # jax, torch tokens/s per round; round 3's torch failed
    rows = []
    for i, (j, t) in enumerate(speeds, start=1):
        rows.append({"framework": "jax", "round": i, "device": "cpu", "params": 81920, "step_ms": 1.0, "tokens_per_s": j})
        rows.append({"framework": "torch", "round": i, "error": "boom"} if t is None else
                    {"framework": "torch", "round": i, "device": "cpu", "params": 81920, "step_ms": 1.0, "tokens_per_s": t})
    facts = mfu.add_mfu(rows, args)
    assert mfu.round_ratios(rows) == pytest.approx([1.25, 0.9])
    text = mfu.format_table(rows, facts, args, "cpu")
    assert "| jax (round 2) | cpu |" in text and "| torch (round 3) | failed: boom" in text
    assert "JAX / PyTorch tokens/s: 1.075x (median of 2 rounds: 1.250x, 0.900x)" in text


def test_nanochat_path_errors_are_clear(tmp_path, monkeypatch, capsys):
    assert mfu.main(["--nanochat", str(tmp_path / "nowhere"), "--frameworks", "torch"]) == 2
    assert "no nanochat/gpt.py" in capsys.readouterr().err
    broken = tmp_path / "broken"
    (broken / "nanochat").mkdir(parents=True)
    (broken / "nanochat" / "__init__.py").write_text("")
    (broken / "nanochat" / "gpt.py").write_text("import a_module_nanochat_needs_but_is_missing\n")
    monkeypatch.syspath_prepend(str(broken))  # as bench.mfu's PYTHONPATH puts it for the torch worker
    with pytest.raises(tn.NanochatImportError, match="importing nanochat.gpt failed: ModuleNotFoundError"):
        tn.import_nanochat_gpt(broken)


# --------------------------------------------------------------------------- end to end (subprocesses)

SMOKE = ["--depth", "1", "--vocab_size", "256", "--seq_len", "64", "--device_batch_size", "2",
         "--steps", "2", "--warmup", "1", "--torch_threads", "1"]


def test_step_bench_on_real_data_feeds_the_loaders_batches(tmp_path):
    """``--data_dir``: each step gets the loader's next (A, B, T) stack, exactly as a fresh loader yields them."""
    from nanochat_jax.dataloader import build_pretrain_loader
    from nanochat_jax.dataset import parquet_files_for_split
    from nanochat_jax.tokenizer import Tokenizer
    from train.tokenizer import iter_train_texts

    tok = Tokenizer.train_from_iterator(iter_train_texts(parquet_files_for_split("train", "sample"), 200_000, 10_000), 300)
    tok.save(tmp_path / "tok")
    argv = ["--depth", "1", "--vocab_size", "320", "--seq_len", "32", "--device_batch_size", "1", "--grad_accum", "2",
            "--steps", "2", "--warmup", "1", "--data_dir", "sample", "--tokenizer_dir", str(tmp_path / "tok")]  # fmt: skip
    args = step.parse_args(argv)
    mesh = sharding.make_mesh()
    rows = jax.local_device_count()
    batches, loader = step.loader_batches(args, mesh)
    with build_pretrain_loader(tok, "sample", "train", 2 * rows, 32, streams=8, prefetch=0) as reference:
        want = [next(reference) for _ in range(2)]  # a step: 2 micro-batches of `rows` rows, from 8 streams
    try:
        for k in range(2):
            x, y = next(batches)
            assert x.shape == y.shape == (2, rows, 32) and x.sharding == sharding.microbatch_sharding(mesh)
            np.testing.assert_array_equal(np.asarray(x), want[k][0].reshape(2, rows, 32))
            np.testing.assert_array_equal(np.asarray(y), want[k][1].reshape(2, rows, 32))
    finally:
        loader.close()

    result = step.benchmark(args)
    assert "data=sample (stream)" in result["config"] and math.isfinite(result["loss"]) and result["step_ms"] > 0
    with pytest.raises(SystemExit, match="tokenizer vocab 300 > --vocab_size 256"):
        step.benchmark(step.parse_args(argv[:2] + ["--vocab_size", "256"] + argv[4:]))


GPU_MACHINE_LACKS = ("grain", "tensorboardX", "rustbpe", "ml_collections")
BLOCKER = f"""
import sys
class _Absent:  # the GPU machines have none of these: importing one fails as it would there
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {GPU_MACHINE_LACKS!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
sys.meta_path.insert(0, _Absent())
"""


def run_bench(script, argv, tmp_path, timeout=240):
    """``python -m bench.<script>`` (workers included) with the GPU machines' missing packages blocked."""
    (tmp_path / "site").mkdir(exist_ok=True)
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    return subprocess.run([sys.executable, "-m", f"bench.{script}", *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO), env=env, check=False)


def run_mfu(argv, tmp_path):
    return run_bench("mfu", argv, tmp_path)


def test_decode_runs_without_the_gpu_machines_missing_packages(tmp_path):
    argv = ["--depth", "1", "--vocab_size", "256", "--seq_len", "64", "--prompt_tokens", "8", "--decode_tokens", "8",
            "--batch_sizes", "1", "--repeats", "1", "--chunk", "4"]
    proc = run_bench("decode", argv, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "model: random d1" in proc.stdout and "tok/s" in proc.stdout


def test_step_parts_times_every_part_on_both_sides(capsys):
    """``bench.step_parts`` prints one row per part with a JAX and a PyTorch median and their ratio."""
    from bench import step_parts

    argv = ["--depth", "1", "--vocab_size", "256", "--seq_len", "64", "--device_batch_size", "2", "--reps", "1"]
    assert step_parts.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {ln.split(" | ")[0].strip("| "): ln for ln in lines if ln.startswith("| ") and " ms |" in ln}
    assert set(rows) == set(step_parts.PARTS)
    for part, row in rows.items():
        jax_ms, torch_ms, ratio = (float(c.strip().rstrip("msx ").replace(",", "")) for c in row.strip("|").split("|")[1:4])
        assert jax_ms > 0 and torch_ms > 0 and ratio == pytest.approx(torch_ms / jax_ms, rel=0.25), part  # ms printed to 0.1


def test_mfu_end_to_end_both_frameworks(tmp_path):
    """Both workers run with grain, tensorboardX, rustbpe and ml_collections absent, as on the GPU machines."""
    out = tmp_path / "mfu.json"
    proc = run_mfu(SMOKE + ["--json", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith(("| jax |", "| torch |"))]
    assert len(rows) == 2, proc.stdout
    assert all("| n/a |" in r for r in rows)  # MFU: no published CPU peak
    assert "JAX / PyTorch tokens/s: " in proc.stdout and "x" in proc.stdout.split("JAX / PyTorch tokens/s: ")[1]
    res = json.loads(out.read_text())
    assert res["platform"] == "cpu" and res["flops_per_token"] == GPTConfig.from_depth(1, vocab_size=256, sequence_len=64).flops_per_token()
    by = {r["framework"]: r for r in res["results"]}
    assert set(by) == {"jax", "torch"}
    for r in by.values():
        assert r["num_devices"] == 1 and r["tokens_per_s"] > 0 and r["step_ms"] > 0 and r["mfu"] is None
        # Same tokens, zero-init lm_head: both start at ln(V) and both learned the repeated batch.
        assert r["loss"] < math.log(256) - 0.3
    # Same initial weights (the JAX init loaded into torch) and tokens: after two updates the losses
    # differed by 2.1e-6 here (bf16 Newton-Schulz rounding may differ across CPUs, hence the margin).
    assert abs(by["jax"]["loss"] - by["torch"]["loss"]) < 1e-4
    assert res["jax_over_torch_tokens_per_s"] == pytest.approx(by["jax"]["tokens_per_s"] / by["torch"]["tokens_per_s"])


FAKE_GPT = '''
"""A stand-in for nanochat/gpt.py (classic interface) that logs what the harness does with it."""
import json, os
import torch
from bench import torch_reference as tr

GPTConfig = tr.GPTConfig
LOG = os.environ.get("FAKE_NANOCHAT_LOG") or {log!r}

def log(**event):
    with open(LOG, "a") as f:
        f.write(json.dumps(event) + "\\n")

class CountingSGD(torch.optim.SGD):
    def step(self, closure=None):
        log(event="muon_step", momentum=[g["momentum"] for g in self.param_groups])
        return super().step(closure)

class GPT(tr.GPT):
    def __init__(self, config):
        super().__init__(config)
        log(event="init", device=str(self.lm_head.weight.device), config=vars(config))

    def init_weights(self):
        super().init_weights()
        log(event="init_weights", device=str(self.lm_head.weight.device))

    def setup_optimizers(self, unembedding_lr=0.004, embedding_lr=0.2, matrix_lr=0.02, weight_decay=0.0):
        log(event="setup_optimizers", args=[unembedding_lr, embedding_lr, matrix_lr, weight_decay])
        adamw = torch.optim.AdamW([dict(params=[self.lm_head.weight], lr=unembedding_lr),
                                   dict(params=[self.transformer.wte.weight], lr=embedding_lr)],
                                  betas=(0.8, 0.95), eps=1e-10, weight_decay=weight_decay)
        return [adamw, CountingSGD(self.transformer.h.parameters(), lr=matrix_lr, momentum=0.5)]

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        log(event="forward", shape=list(idx.shape), with_targets=targets is not None)
        return super().forward(idx, targets, loss_reduction=loss_reduction)
'''


def test_mfu_nanochat_checkout_path(tmp_path):
    log = tmp_path / "calls.jsonl"
    pkg = tmp_path / "checkout" / "nanochat"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "gpt.py").write_text(textwrap.dedent(FAKE_GPT.format(log=str(log))))
    out = tmp_path / "mfu.json"
    steps, warmup = 2, 2
    argv = ["--frameworks", "torch", "--nanochat", str(tmp_path / "checkout"), "--json", str(out)]
    argv += SMOKE[:SMOKE.index("--steps")] + ["--steps", str(steps), "--warmup", str(warmup), "--grad_accum", "2"]
    proc = run_mfu(argv, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert any(ln.startswith("| nanochat |") for ln in proc.stdout.splitlines()), proc.stdout
    assert "JAX / PyTorch tokens/s: n/a" in proc.stdout  # only one framework ran
    events = [json.loads(ln) for ln in log.read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[:3] == ["init", "init_weights", "setup_optimizers"]
    assert events[0]["device"] == "meta" and events[1]["device"] == "cpu"  # built on meta, to_empty, init_weights
    assert events[0]["config"] == {"sequence_len": 64, "vocab_size": 256, "n_layer": 1, "n_head": 1, "n_kv_head": 1, "n_embd": 64}
    assert events[2]["args"] == [0.004, 0.2, 0.02, 0.0]  # base_train's classic defaults
    n_steps = steps + warmup
    forwards = [e for e in events if e["event"] == "forward"]
    assert len(forwards) == 2 * n_steps and all(e["shape"] == [2, 64] and e["with_targets"] for e in forwards)
    muon_steps = [e for e in events if e["event"] == "muon_step"]
    assert len(muon_steps) == n_steps and all(m == [0.95] for e in muon_steps for m in [e["momentum"]])
    row = json.loads(out.read_text())["results"][0]
    assert row["framework"] == "nanochat" and row["params"] == GPTConfig.from_depth(1, vocab_size=256, sequence_len=64).num_params()
    assert row["loss"] < math.log(256)
