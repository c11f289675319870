"""Where a CPU train step's time goes, JAX beside eager PyTorch, part by part, in one process.

    python -m bench.step_parts --depth 4 --vocab_size 4096 --seq_len 256 --device_batch_size 8   # the tiny config
    python -m bench.step_parts --depth 2 --vocab_size 512 --seq_len 128 --device_batch_size 4 --reps 9

Why: ``bench.mfu`` says *whether* the JAX step keeps up with PyTorch; this
says *which part* does not. Each part is timed on both sides with the same
model, weights layout, tokens and optimizer as the full step:

- ``forward + loss``: the loss alone (JAX: compiled; PyTorch: eager, no grad);
- ``forward + backward``: loss and gradients;
- ``optimizer``: Muon + AdamW updates from fixed gradients (PyTorch: both
  ``opt.step()`` calls; JAX: ``tx.update`` + apply, compiled);
- ``newton-schulz``: the bf16 quintic iteration alone, on every block
  matrix, stacked by shape as both optimizers do;
- ``full step``: ``bench.step``'s compiled step and ``bench.torch_nanochat``'s
  ``Trainer.train_step``.

CPU only, fp32 (bf16 Newton-Schulz on both sides, as nanochat). Both
frameworks share this process and its two cores, and the two sides of a
part run alternately, ``--reps`` times each, so a busy host slows both alike;
the medians and their ratio are printed. JAX runs on one host device.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from bench import torch_nanochat as tn  # noqa: E402
from bench.common import add_model_flags  # noqa: E402
from bench.torch_reference import GPTConfig as TorchConfig  # noqa: E402
from nanochat_jax import sharding  # noqa: E402
from nanochat_jax.gpt import GPT, GPTConfig  # noqa: E402
from nanochat_jax.optim import _orthogonalize, nanochat_optimizer  # noqa: E402
from nanochat_jax.train_step import accumulated_grads, init_train_state, lm_loss, make_train_step  # noqa: E402

PARTS = ("forward + loss", "forward + backward", "optimizer", "newton-schulz", "full step")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    p.add_argument("--device_batch_size", type=int, default=8)
    p.add_argument("--reps", type=int, default=5, help="timed calls per side and part (median reported)")
    return p.parse_args(argv)


def jax_parts(args, x: np.ndarray, y: np.ndarray) -> dict:
    """Zero-argument callables that run one part of the JAX step to completion."""
    config = GPTConfig.from_depth(args.depth, vocab_size=args.vocab_size, sequence_len=args.seq_len, compute_dtype="float32")
    mesh = sharding.make_mesh(jax.devices()[:1])
    tx = nanochat_optimizer(config, mesh=mesh)
    graphdef, state, shardings = init_train_state(GPT(config, rngs=nnx.Rngs(0)), tx, mesh, shard_muon=False)
    batch = {"inputs": jax.numpy.asarray(x[None]), "targets": jax.numpy.asarray(y[None])}
    one = {"inputs": batch["inputs"][0], "targets": batch["targets"][0]}
    step = make_train_step(graphdef, tx, shardings, mesh, grad_clip=1.0)
    lrm, mom = np.float32(1.0), np.float32(0.95)
    holder = {"state": state}
    for _ in range(3):  # a few real updates, so the gradients below are not the zero-init ones
        holder["state"], _ = step(holder["state"], batch, lrm, mom)
    params = holder["state"].params
    grads = jax.jit(lambda p: accumulated_grads(graphdef, p, batch)[1])(params)
    mats = [grads["h"][k] for k in sorted(grads["h"])]

    def update(g, s, p):
        updates, s = tx.update(g, s, p, lr_multiplier=lrm, muon_momentum=mom)
        return optax.apply_updates(p, updates), s

    loss = jax.jit(lambda p: lm_loss(nnx.merge(graphdef, p), one))
    fwd_bwd = jax.jit(lambda p: accumulated_grads(graphdef, p, batch))
    opt = jax.jit(update)
    ns = jax.jit(lambda ms: _orthogonalize(ms, 5))

    def full():
        holder["state"], metrics = step(holder["state"], batch, lrm, mom)
        float(metrics["loss"])

    opt_state = holder["state"].opt_state
    return {
        "forward + loss": lambda: jax.block_until_ready(loss(params)),
        "forward + backward": lambda: jax.block_until_ready(fwd_bwd(params)),
        "optimizer": lambda: jax.block_until_ready(opt(grads, opt_state, params)),
        "newton-schulz": lambda: jax.block_until_ready(ns(mats)),
        "full step": full,
    }


def torch_parts(args, x: np.ndarray, y: np.ndarray) -> dict:
    """The same parts for ``bench.torch_nanochat``'s eager fp32 CPU trainer."""
    tn.configure_torch(torch.device("cpu"))
    config = TorchConfig.from_depth(args.depth, vocab_size=args.vocab_size, sequence_len=args.seq_len)
    trainer = tn.build_trainer(config, "cpu", compile=False)
    model = trainer.model
    xt, yt = torch.from_numpy(x).long(), torch.from_numpy(y).long()
    for _ in range(3):
        trainer.train_step(xt, yt)
    model(xt, yt).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    muon = trainer.optimizers[-1]

    def fwd_bwd():
        model(xt, yt).backward()
        model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def opt():
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        for o in trainer.optimizers:
            o.step()
        model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def ns():
        for group in muon.param_groups:
            tn.newton_schulz(torch.stack([p.data for p in group["params"]]).float(), group["ns_steps"])

    def no_grad_loss():
        with torch.no_grad():
            model(xt, yt)

    return {
        "forward + loss": no_grad_loss,
        "forward + backward": fwd_bwd,
        "optimizer": opt,
        "newton-schulz": ns,
        "full step": lambda: float(trainer.train_step(xt, yt)),
    }


def time_alternately(sides: dict[str, dict], reps: int) -> dict[str, dict[str, float]]:
    """Median ms per part and side; the sides take turns call by call after one untimed call each."""
    out: dict[str, dict[str, float]] = {}
    for part in PARTS:
        times: dict[str, list[float]] = {side: [] for side in sides}
        for fns in sides.values():
            fns[part]()
        for _ in range(reps):
            for side, fns in sides.items():
                t = time.perf_counter()
                fns[part]()
                times[side].append(1000 * (time.perf_counter() - t))
        out[part] = {side: statistics.median(v) for side, v in times.items()}
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    rng = np.random.default_rng(0)  # bench.step's tokens
    x = rng.integers(0, args.vocab_size, (args.device_batch_size, args.seq_len), dtype=np.int32)
    y = rng.integers(0, args.vocab_size, (args.device_batch_size, args.seq_len), dtype=np.int32)
    result = time_alternately({"jax": jax_parts(args, x, y), "torch": torch_parts(args, x, y)}, args.reps)
    print(f"d{args.depth} V={args.vocab_size} T={args.seq_len} B={args.device_batch_size} fp32, {args.reps} reps per side; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}; jax {jax.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads)")
    print("| part | JAX (median) | PyTorch eager (median) | PyTorch / JAX time |\n|---|---|---|---|")
    for part, t in result.items():
        print(f"| {part} | {t['jax']:.1f} ms | {t['torch']:.1f} ms | {t['torch'] / t['jax']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
