"""A fast PyTorch implementation of nanochat's classic GPT and its training step.

Why it exists: the MFU benchmark (``bench.mfu``) needs a PyTorch baseline
that trains *the same model with the same optimizer* the way nanochat does it
on a GPU, so the JAX step can be judged against what PyTorch achieves on the
same device. It is written in this project from the model description
(nanochat commit 8c89661, classic), not copied from nanochat, and it is
tested for parity against the JAX model (``tests/test_bench_mfu.py``).

What makes it the nanochat baseline and not a strawman:
- the model is ``bench.torch_reference``, the classic GPT with nanochat's
  parameter names and ``(out, in)`` layout that every JAX parity test is
  checked against, so state dicts move between it, nanochat itself and
  ``nanochat_jax.convert``;
- bf16 autocast on CUDA (fp32 elsewhere), ``wte`` stored in bf16 on CUDA (as
  nanochat does), ``torch.compile(model, dynamic=False)``, SDPA causal
  attention (flash kernel on CUDA) with native GQA;
- nanochat's optimizer split: fused ``torch.optim.AdamW`` for ``wte`` /
  ``lm_head`` (lrs x (n_embd/768)**-0.5, betas (0.8, 0.95), eps 1e-10) and
  Muon for every block matrix (lerp-Nesterov momentum, quintic Newton-Schulz
  in bf16, lr 0.02 x sqrt(max(1, rows/cols))); Muon stacks same-shape
  matrices so each shape costs one batched NS instead of one per layer
  (values are per matrix, unchanged);
- gradient accumulation and grad-norm clipping at 1.0 without a host sync
  (nanochat classic reads ``.item()`` there; the ``--nanochat`` path keeps
  that, this fast baseline does not).

Nothing here imports JAX: the benchmark runs it in its own process so the
two frameworks' memory pools never share a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

# The model is the project's one PyTorch implementation of classic nanochat,
# the independent reference every parity test compares JAX against; the
# benchmark drives exactly that module (compiled, under bf16 autocast).
from bench.torch_reference import GPT, GPTConfig

NS_COEFFS = (3.4445, -4.7750, 2.0315)
LRS = dict(unembedding_lr=0.004, embedding_lr=0.2, matrix_lr=0.02, weight_decay=0.0)  # classic base_train's defaults
NS_EPS = 1e-7


# --------------------------------------------------------------------------- Muon


def newton_schulz(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Quintic Newton-Schulz orthogonalisation in bf16 on the last two axes.

    nanochat's recipe: cast to bf16, transpose tall matrices to wide, divide
    by the Frobenius norm + 1e-7, then ``A = X Xᵀ; B = b A + (c A) A;
    X = a X + B X``. Leading axes are a batch of independent matrices.
    """
    a, b, c = NS_COEFFS
    X = G.bfloat16()
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + NS_EPS)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + (c * A) @ A
        X = a * X + B @ X
    return X.mT if tall else X


class Muon(torch.optim.Optimizer):
    """nanochat's classic single-device Muon, with same-shape matrices stacked.

    Per matrix: ``buf = lerp(buf, g, 1-m)``; ``g = lerp(g, buf, m)``
    (Nesterov, no bias correction); ``p -= lr * sqrt(max(1, rows/cols)) *
    NS5_bf16(g)``. No weight decay. One param group per shape keeps a
    stacked momentum buffer, so the momentum, NS and update for every layer
    of that shape run as a handful of batched kernels.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, ns_steps: int = 5, ns_fn: Callable | None = None):
        params = list(params)
        if any(p.ndim != 2 for p in params):
            raise ValueError("Muon only takes 2-D weight matrices")
        by_shape: dict[tuple[int, int], list] = {}
        for p in params:
            by_shape.setdefault(tuple(p.shape), []).append(p)
        groups = [dict(params=ps) for _, ps in sorted(by_shape.items())]
        super().__init__(groups, dict(lr=lr, momentum=momentum, ns_steps=ns_steps))
        self.ns_fn = ns_fn or newton_schulz

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params = group["params"]
            with_grad = [p.grad is not None for p in params]
            if not any(with_grad):
                continue
            if not all(with_grad):
                raise RuntimeError("Muon: every matrix of a shape group needs a gradient (the momentum is stacked)")
            g = torch.stack([p.grad for p in params]).float()
            state = self.state[params[0]]
            if "stacked_momentum" not in state:
                state["stacked_momentum"] = torch.zeros_like(g)
            buf = state["stacked_momentum"]
            m = group["momentum"]
            buf.lerp_(g, 1 - m)
            g.lerp_(buf, m)
            O = self.ns_fn(g, group["ns_steps"])
            rows, cols = params[0].shape
            alpha = -group["lr"] * max(1.0, rows / cols) ** 0.5
            torch._foreach_add_(params, list(O.to(params[0].dtype).unbind(0)), alpha=alpha)


def setup_optimizers(model: GPT, *, fused: bool | None = None, ns_fn: Callable | None = None) -> list[torch.optim.Optimizer]:
    """nanochat's classic split at base_train's ``LRS``: ``[AdamW(lm_head, wte), Muon(block matrices)]``.

    AdamW lrs scale by ``(n_embd/768)**-0.5``; Muon's lr does not. ``fused``
    defaults to True on CUDA (nanochat's single-GPU AdamW), the plain foreach
    implementation elsewhere.
    """
    scale = (model.config.n_embd / 768) ** -0.5
    device = model.lm_head.weight.device
    fused = (device.type == "cuda") if fused is None else fused
    adamw = torch.optim.AdamW(
        [
            dict(params=[model.lm_head.weight], lr=LRS["unembedding_lr"] * scale),
            dict(params=[model.transformer.wte.weight], lr=LRS["embedding_lr"] * scale),
        ],
        betas=(0.8, 0.95),
        eps=1e-10,
        weight_decay=LRS["weight_decay"],
        fused=fused,
    )
    muon = Muon(model.transformer.h.parameters(), lr=LRS["matrix_lr"], momentum=0.95, ns_fn=ns_fn)
    return [adamw, muon]


# --------------------------------------------------------------------------- training step


class Trainer:
    """forward + backward + optimizer step, base_train's inner loop.

    ``train_step(x, y)`` takes ``(B, T)`` or ``(A, B, T)`` token tensors (A
    micro-batches of gradient accumulation) and returns the mean loss as a
    device tensor without reading it (the caller decides when to sync).
    Learning-rate multiplier and Muon momentum are per-step arguments, set on
    the param groups as base_train does (``lr = initial_lr * lrm``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        *,
        grad_clip: float = 1.0,
        autocast_dtype: torch.dtype | None = None,
        compile_model: bool = False,
        sync_grad_norm: bool = False,
    ):
        self.model = model
        self.forward = torch.compile(model, dynamic=False) if compile_model else model
        self.optimizers = list(optimizers)
        self.grad_clip = grad_clip
        self.sync_grad_norm = sync_grad_norm  # nanochat classic's `.item()` on the norm
        self.device = next(model.parameters()).device
        self.autocast_dtype = autocast_dtype
        for opt in self.optimizers:
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
        self.last_grad_norm = None

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr_multiplier: float = 1.0, muon_momentum: float = 0.95) -> torch.Tensor:
        if x.ndim == 2:
            x, y = x[None], y[None]
        accum = x.size(0)
        total = torch.zeros((), device=self.device)
        for i in range(accum):
            with self._autocast():
                loss = self.forward(x[i], y[i])
            total += loss.detach()
            (loss / accum).backward()
        if self.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, foreach=True)
            self.last_grad_norm = norm.item() if self.sync_grad_norm else norm
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lr_multiplier
                if "momentum" in group and "betas" not in group:  # Muon groups (not AdamW's)
                    group["momentum"] = muon_momentum
            opt.step()
        self.model.zero_grad(set_to_none=True)
        return total / accum


def resolve_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def configure_torch(device: torch.device) -> None:
    """nanochat's process settings: seed 42, TF32 matmuls (``high`` precision) on CUDA."""
    torch.manual_seed(42)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def build_trainer(
    config: GPTConfig,
    device: torch.device | str | None = None,
    *,
    compile: bool | None = None,
    autocast: bool | None = None,
    grad_clip: float = 1.0,
    wte_bf16: bool | None = None,
) -> Trainer:
    """This module's model and optimizers on ``device``, set up like base_train.

    Defaults follow the device: on CUDA bf16 autocast, bf16 ``wte``,
    ``torch.compile`` of the model and of Newton-Schulz; on CPU plain fp32
    eager (Inductor's CPU compile is slow and the CPU run is a smoke test).
    """
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    on_cuda = device.type == "cuda"
    compile = on_cuda if compile is None else compile
    autocast = on_cuda if autocast is None else autocast
    wte_bf16 = on_cuda if wte_bf16 is None else wte_bf16
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    model.init_weights()
    if wte_bf16:
        model.transformer.wte.to(dtype=torch.bfloat16)
    ns_fn = torch.compile(newton_schulz, dynamic=False) if compile else None
    return Trainer(
        model,
        setup_optimizers(model, ns_fn=ns_fn),
        grad_clip=grad_clip,
        autocast_dtype=torch.bfloat16 if autocast else None,
        compile_model=compile,
    )


# --------------------------------------------------------------------------- a user's nanochat checkout


class NanochatImportError(RuntimeError):
    """The ``--nanochat`` path does not hold an importable nanochat."""


def import_nanochat_gpt(path: str | Path):
    """Import ``nanochat.gpt`` of the checkout root ``path``, which ``bench.mfu`` puts on the worker's PYTHONPATH."""
    root = Path(path).expanduser().resolve()
    if not (root / "nanochat" / "gpt.py").is_file():
        raise NanochatImportError(
            f"--nanochat {path}: no nanochat/gpt.py under {root}; pass the root of a nanochat git checkout"
        )
    try:
        module = importlib.import_module("nanochat.gpt")
    except Exception as e:  # any import-time failure (missing deps, syntax) gets the same clear message
        raise NanochatImportError(f"--nanochat {path}: importing nanochat.gpt failed: {type(e).__name__}: {e}") from e
    if Path(module.__file__).resolve() != root / "nanochat" / "gpt.py":
        raise NanochatImportError(f"--nanochat {path}: another nanochat ({module.__file__}) shadows the checkout")
    missing = [n for n in ("GPT", "GPTConfig") if not hasattr(module, n)]
    if missing:
        raise NanochatImportError(f"--nanochat {path}: nanochat.gpt has no {', '.join(missing)}")
    return module


def build_nanochat_trainer(
    path: str | Path,
    config: GPTConfig,
    device: torch.device | str | None = None,
    *,
    compile: bool | None = None,
    grad_clip: float = 1.0,
) -> Trainer:
    """A user's nanochat model + optimizers, driven the way classic base_train drives them.

    ``GPT(GPTConfig(...))`` on the meta device, ``to_empty`` + ``init_weights()``,
    ``torch.compile(model, dynamic=False)``, bf16 autocast on CUDA,
    ``setup_optimizers(unembedding_lr, embedding_lr, matrix_lr, weight_decay)``
    -> ``[adamw, muon]``, clip with the ``.item()`` base_train does. A HEAD
    checkout's single ``setup_optimizer`` is accepted too (best effort).
    """
    module = import_nanochat_gpt(path)
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    on_cuda = device.type == "cuda"
    compile = on_cuda if compile is None else compile
    with torch.device("meta"):
        model = module.GPT(module.GPTConfig(**dataclasses.asdict(config)))
    model.to_empty(device=device)
    model.init_weights()
    if hasattr(model, "setup_optimizers"):
        optimizers = model.setup_optimizers(**LRS)
    elif hasattr(model, "setup_optimizer"):
        optimizers = [model.setup_optimizer(**LRS)]
    else:
        raise NanochatImportError(f"--nanochat {path}: GPT has neither setup_optimizers nor setup_optimizer")
    return Trainer(
        model,
        optimizers,
        grad_clip=grad_clip,
        autocast_dtype=torch.bfloat16 if on_cuda else None,
        compile_model=compile,
        sync_grad_norm=True,
    )


# --------------------------------------------------------------------------- benchmark


def synthetic_batch(vocab_size: int, grad_accum: int, rows: int, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact tokens ``bench.step`` feeds the JAX step (same generator, seed and draws)."""
    rng = np.random.default_rng(0)
    shape = (grad_accum, rows, seq_len)
    x = rng.integers(0, vocab_size, shape, dtype=np.int32)
    y = rng.integers(0, vocab_size, shape, dtype=np.int32)
    return x, y


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_trainer(trainer: Trainer, x: torch.Tensor, y: torch.Tensor, *, steps: int, warmup: int) -> dict:
    """Median step time after warm-up; every timed step ends by reading its loss.

    The first step compiles (torch.compile is lazy); ``compile_s`` is its
    wall time minus a median step, comparable to JAX's AOT compile time
    (None for an eager model, where the difference is only warm-up noise).
    """
    device = trainer.device
    t0 = time.perf_counter()
    loss = trainer.train_step(x, y)
    float(loss)
    _sync(device)
    first_s = time.perf_counter() - t0
    for _ in range(max(warmup, 1) - 1):
        loss = trainer.train_step(x, y)
    _sync(device)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        loss = trainer.train_step(x, y)
        float(loss)
        _sync(device)
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    compile_s = max(0.0, first_s - step_s) if trainer.forward is not trainer.model else None
    return {"first_step_s": first_s, "compile_s": compile_s, "step_s": step_s, "loss": float(loss)}


def jax_initial_state_dict(config: GPTConfig) -> dict[str, np.ndarray]:
    """``bench.step``'s initial weights (``GPT(config, rngs=nnx.Rngs(0))``) in nanochat's layout.

    Loaded into the PyTorch model so both sides train the same weights on the
    same tokens and their losses can be compared closely. JAX runs on the host
    here, leaving an accelerator to PyTorch.
    """
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from flax import nnx

    from nanochat_jax import convert, gpt

    jax_config = gpt.GPTConfig(**dataclasses.asdict(config))
    return convert.params_to_state_dict(convert.model_params(gpt.GPT(jax_config, rngs=nnx.Rngs(0))), jax_config)


def load_state_dict_numpy(model: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Copy ``state`` into ``model``'s parameters, each keeping its own device and dtype (bf16 ``wte`` on CUDA)."""
    own = model.state_dict()
    if missing := sorted(set(state) - set(own)):
        raise KeyError(f"the model has no parameters named {missing[:3]}")
    with torch.no_grad():
        for name, array in state.items():
            own[name].copy_(torch.from_numpy(array))


def benchmark(args, *, device: str, compile: bool | None = None) -> dict:
    """Time this module's step (or ``args.nanochat``'s) on ``bench.step``'s tokens; ``args``: ``bench.common`` flags."""
    dev = resolve_device(device)
    configure_torch(dev)
    config = GPTConfig.from_depth(args.depth, vocab_size=args.vocab_size, sequence_len=args.seq_len)
    if args.nanochat:
        trainer = build_nanochat_trainer(args.nanochat, config, dev, compile=compile)
    else:
        trainer = build_trainer(config, dev, compile=compile)
    load_state_dict_numpy(trainer.model, jax_initial_state_dict(config))
    compiled = trainer.forward is not trainer.model
    xs, ys = synthetic_batch(args.vocab_size, args.grad_accum, args.device_batch_size, args.seq_len)
    x = torch.from_numpy(xs).long().to(dev)
    y = torch.from_numpy(ys).long().to(dev)
    timing = time_trainer(trainer, x, y, steps=args.steps, warmup=args.warmup)
    tokens = args.grad_accum * args.device_batch_size * args.seq_len
    on_cuda = dev.type == "cuda"
    precision = "bf16 autocast" if trainer.autocast_dtype is not None else "fp32"
    return {
        "framework": "nanochat" if args.nanochat else "torch",
        "device": torch.cuda.get_device_name(dev) if on_cuda else "cpu",
        "num_devices": 1,
        "config": f"d{args.depth} V={args.vocab_size} T={args.seq_len} B={args.device_batch_size}x{args.grad_accum}"
        f" {precision} compile={compiled}" + (f" nanochat={args.nanochat}" if args.nanochat else ""),
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "compile_s": timing["compile_s"],
        "first_step_s": timing["first_step_s"],
        "step_ms": 1000 * timing["step_s"],
        "tokens_per_s": tokens / timing["step_s"],
        "peak_mem_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if on_cuda else None,
        "loss": timing["loss"],
        "versions": f"torch {torch.__version__}" + (f" (CUDA {torch.version.cuda})" if on_cuda else ""),
    }

