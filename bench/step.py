"""Benchmark the real train step (the one train.pretrain compiles), on synthetic tokens or real data.

    python -m bench.step --depth 20 --device_batch_size 32 --seq_len 2048          # one H100
    python -m bench.step --depth 2 --vocab_size 512 --seq_len 128 --device_batch_size 4   # CPU smoke
    python -m bench.step --depth 20 --data_dir sample --tokenizer_dir sample_tokenizer   # + the data loader
    python -m bench.step --depth 32 --param_sharding fsdp --compile_only   # compiled memory, no run

Prints compile time, median step time, tokens/s, MFU (nanochat's FLOPs
formula and peak table, see nanochat_jax.hardware) and peak device memory.
Medians over timed steps after warm-up; each timed step is synchronised on
its loss, so step time includes everything the device does.

By default one synthetic batch (numpy seed 0) is reused for every step, so
only the device is measured. With ``--data_dir`` every step instead pulls its
micro-batches from the project's loader (``train.pretrain``'s data path:
tokenizing, packing, host-to-device assembly) and the timed step includes any
wait for data. The tokenizer (``--tokenizer_dir``, resolved like the config
field) may have a smaller vocabulary than ``--vocab_size``: its ids are valid
in the larger model, and token values do not change the kernels.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np
from flax import nnx

from bench.common import add_model_flags, add_step_flags, load_tokenizer, resolve_dtype
from nanochat_jax import hardware, sharding
from nanochat_jax.gpt import GPT, GPTConfig
from nanochat_jax.optim import nanochat_optimizer
from nanochat_jax.train_step import abstract_train_state, init_train_state, make_train_step, split_model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    add_step_flags(p, steps=10, warmup=2)
    p.add_argument("--compile_only", action="store_true", help="compile and report the compiled step's memory, run nothing")
    p.add_argument("--param_sharding", default="replicated", choices=["replicated", "fsdp"], help="the config's optim.param_sharding")
    return p.parse_args(argv)


def synthetic_batches(args, mesh):
    """The same global ``(A, B, T)`` batch forever (numpy seed 0; ``bench.torch_nanochat`` draws the same)."""
    rows = args.device_batch_size * jax.local_device_count()
    rng = np.random.default_rng(0)
    shape = (args.grad_accum, rows, args.seq_len)
    x = sharding.make_global_microbatches(rng.integers(0, args.vocab_size, shape, dtype=np.int32), mesh)
    y = sharding.make_global_microbatches(rng.integers(0, args.vocab_size, shape, dtype=np.int32), mesh)
    while True:
        yield x, y


def loader_batches(args, mesh):
    """Real batches from the pretraining loader, as ``train.pretrain`` feeds its step; returns (batches, loader)."""
    from nanochat_jax.dataloader import DEFAULT_STREAMS, build_pretrain_loader, iter_global_microbatches, split_stream_count

    tokenizer = load_tokenizer(args.tokenizer_dir)
    if tokenizer.get_vocab_size() > args.vocab_size:
        raise SystemExit(f"tokenizer vocab {tokenizer.get_vocab_size():,} > --vocab_size {args.vocab_size:,}: its ids would not fit the model")
    step_rows = args.device_batch_size * jax.device_count() * args.grad_accum
    streams = split_stream_count(DEFAULT_STREAMS, step_rows, "train", args.data_dir)
    loader = build_pretrain_loader(tokenizer, args.data_dir, "train", step_rows, args.seq_len, streams=streams,
                                   mode=args.loader_mode)  # fmt: skip
    return iter_global_microbatches(loader, mesh, args.grad_accum), loader


def build_step(args, config: GPTConfig, mesh, compile_only: bool):
    """The jitted step and its state: real, or (``compile_only``) shapes only, since a replicated
    d32 would not fit 8 fake CPU devices in host memory."""
    shard_muon = not args.no_shard_muon
    layout = getattr(args, "param_sharding", "replicated")  # bench.mfu reuses benchmark() with its own flags
    tx = nanochat_optimizer(config, mesh=mesh, shard_muon=shard_muon, param_sharding=layout)
    if compile_only:
        graphdef, params = split_model(nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0))))
        state = abstract_train_state(params, tx, mesh, shard_muon=shard_muon, param_sharding=layout)
        shardings = jax.tree.map(lambda a: a.sharding, state)
    else:
        graphdef, state, shardings = init_train_state(GPT(config, rngs=nnx.Rngs(0)), tx, mesh, shard_muon=shard_muon, param_sharding=layout)
    return make_train_step(graphdef, tx, shardings, mesh, grad_clip=1.0), state


def benchmark(args, compile_only: bool = False) -> dict:
    """One row of results; ``args`` holds the ``bench.common`` model and step flags."""
    dtype = resolve_dtype(args.compute_dtype)
    config = GPTConfig.from_depth(
        args.depth, vocab_size=args.vocab_size, sequence_len=args.seq_len, compute_dtype=dtype,
        attention_impl=args.attention_impl, remat=args.remat, scan_layers=args.scan_layers,
        ce_chunk_size=args.ce_chunk_size,
    )
    mesh = sharding.make_mesh()
    step_fn, state = build_step(args, config, mesh, compile_only)

    loader = None
    if args.data_dir is None:
        batches = synthetic_batches(args, mesh)
    else:
        batches, loader = loader_batches(args, mesh)
    lrm, mom = np.float32(1.0), np.float32(0.95)

    try:
        x, y = next(batches)
        t0 = time.perf_counter()
        compiled = step_fn.lower(state, {"inputs": x, "targets": y}, lrm, mom).compile()
        compile_s = time.perf_counter() - t0
        memory = compiled.memory_analysis()  # XLA's buffer assignment: known before anything runs
        times, losses, metrics = [], [], None
        for _ in range(0 if compile_only else args.warmup):
            state, metrics = compiled(state, {"inputs": x, "targets": y}, lrm, mom)
            x, y = next(batches)
            losses.append(metrics["loss"])  # stays on device: warm-up steps are not synchronised one by one
        jax.block_until_ready(metrics)
        for _ in range(0 if compile_only else args.steps):
            t = time.perf_counter()
            state, metrics = compiled(state, {"inputs": x, "targets": y}, lrm, mom)
            x, y = next(batches)  # the next step's data is prepared while this one runs, as in train.pretrain
            losses.append(float(metrics["loss"]))
            times.append(time.perf_counter() - t)
    finally:
        if loader is not None:
            loader.close()
    step_s = statistics.median(times) if times else None
    tokens = args.grad_accum * args.device_batch_size * jax.device_count() * args.seq_len
    mfu = hardware.mfu(config.flops_per_token(), tokens, step_s) if step_s else None
    peak = hardware.peak_memory_bytes()
    return {
        "device": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "config": f"d{args.depth} V={args.vocab_size} T={args.seq_len} B={args.device_batch_size}x{args.grad_accum} {dtype}"
        f" remat={args.remat} scan={args.scan_layers} attn={args.attention_impl} ce_chunk={args.ce_chunk_size}"
        + ("" if args.data_dir is None else f" data={args.data_dir or 'base_data'} ({args.loader_mode})")
        + f" params={getattr(args, 'param_sharding', 'replicated')} shard_muon={not args.no_shard_muon}",
        "params": config.num_params(),
        "compile_s": compile_s,
        "step_ms": 1000 * step_s if step_s else None,
        "tokens_per_s": tokens / step_s if step_s else None,
        "mfu": mfu,
        "peak_mem_gib": None if peak is None else peak / 2**30,
        # Scratch = the step's temporaries as compiled (activations, logits, ...); params + optimizer state are args.
        "scratch_gib": None if memory is None else memory.temp_size_in_bytes / 2**30,
        "state_gib": None if memory is None else memory.argument_size_in_bytes / 2**30,
        "output_gib": None if memory is None else memory.output_size_in_bytes / 2**30,
        "loss": None if metrics is None else float(metrics["loss"]),  # the last step's; bench.mfu compares it across frameworks
        "losses": [float(v) for v in losses],  # every step's loss (before its update): the training trend
        "versions": f"jax {jax.__version__}",
    }


def print_table(result: dict) -> None:
    ran = result["step_ms"] is not None

    def gib(v):
        return "n/a" if v is None else f"{v:.2f} GiB"

    mfu = "n/a (no peak for this device)" if result["mfu"] is None else f"{100 * result['mfu']:.1f}%"
    rows = [
        ("device", result["device"]),
        ("config", result["config"]),
        ("params", f"{result['params']:,}"),
        ("compile", f"{result['compile_s']:.2f} s"),
        ("step (median)", f"{result['step_ms']:.1f} ms" if ran else "not run (--compile_only)"),
        ("tokens/s", f"{result['tokens_per_s']:,.0f}" if ran else "-"),
        ("MFU", mfu if ran else "-"),
        ("peak memory", gib(result["peak_mem_gib"])),
        ("compiled: scratch", gib(result["scratch_gib"])),
        ("compiled: args", gib(result["state_gib"]) + " (params, optimizer state, batch)"),
        ("compiled: outputs", gib(result["output_gib"]) + " (new params, optimizer state, metrics)"),
        ("versions", result["versions"]),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"| {k:<{width}} | {v} |" for k, v in rows))


if __name__ == "__main__":
    cli = parse_args()
    print_table(benchmark(cli, compile_only=cli.compile_only))
