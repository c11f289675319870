"""Benchmark inference with the real Engine programs: prefill latency, decode speed, memory bandwidth.

    python -m bench.decode --depth 20 --prompt_tokens 2048 --decode_tokens 256          # GPU, random d20
    python -m bench.decode --source sft --decode_tokens 256                             # a trained checkpoint
    python -m bench.decode --depth 2 --vocab_size 512 --seq_len 128 --prompt_tokens 64 \\
        --decode_tokens 64 --batch_sizes 1,8                                            # CPU smoke

For each batch size it times (medians over --repeats, every call synchronised):
  prefill   batch-1 prompt forward + cache replication to B rows (nanochat's TTFT minus sampling)
  TTFT      prefill + the first decode step (first token sampled and fed back)
  step      decode latency per token step (all B rows), from full chunks of --chunk steps
  tok/s     B * steps / decode time
  BW util   bytes the step must read / step time / peak HBM bandwidth (GPU/TPU only): weights in
            the compute dtype (the embedding table excluded: a step reads B rows of it) plus the
            whole fixed-shape KV cache, k and v, all T_max positions, which the masked
            attention reads every step.
Stop tokens are disabled (ids -1) so every row decodes exactly --decode_tokens tokens.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench.common import add_model_flags, resolve_dtype
from nanochat_jax import hardware
from nanochat_jax.checkpoint import STAGE_DIRS, load_model
from nanochat_jax.engine import FORCED_QUEUE, Engine
from nanochat_jax.gpt import GPT, GPTConfig


class SyntheticTokenizer:
    """Enough tokenizer for both engines with a random model: special ids at the top of the vocab."""

    SPECIALS = ("<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
                "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>")  # fmt: skip

    def __init__(self, vocab_size: int):
        self.ids = {name: vocab_size - len(self.SPECIALS) + i for i, name in enumerate(self.SPECIALS)}

    def encode_special(self, name: str) -> int:
        return self.ids[name]

    def get_bos_token_id(self) -> int:
        return self.ids["<|bos|>"]

    def encode(self, text, *args, **kwargs):
        return [ord(c) % self.ids["<|bos|>"] for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(32 + i % 90) for i in ids)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    p.add_argument("--source", default=None, choices=tuple(STAGE_DIRS), help="benchmark a checkpoint instead of a random model")
    p.add_argument("--model_tag", default=None)
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--prompt_tokens", type=int, default=512)
    p.add_argument("--decode_tokens", type=int, default=256)
    p.add_argument("--batch_sizes", default="1,8,32")
    p.add_argument("--chunk", type=int, default=32, help="decode steps per compiled call")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top_k", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def build(args):
    dtype = resolve_dtype(args.compute_dtype)
    if args.source:
        model, tokenizer, _ = load_model(args.source, args.model_tag, args.step, compute_dtype=dtype, scan_layers=args.scan_layers)
        return model, tokenizer, f"{args.source} checkpoint"
    config = GPTConfig.from_depth(
        args.depth, vocab_size=args.vocab_size, sequence_len=args.seq_len, compute_dtype=dtype, scan_layers=args.scan_layers
    )
    model = GPT(config, rngs=nnx.Rngs(0))
    return model, SyntheticTokenizer(config.vocab_size), f"random d{args.depth}"


def _sync(x):
    return jax.block_until_ready(x)


def bench_batch(engine: Engine, params, prompt: list[int], batch: int, args) -> dict:
    cfg = engine.model.config
    max_tokens, t_max = engine.plan(len(prompt), args.decode_tokens)
    F = FORCED_QUEUE
    queue, zeros = np.zeros((batch, F), np.int32), np.zeros((batch,), np.int32)
    no_stop = np.full((3,), -1, np.int32)
    top_k = args.top_k or None

    def decode(ds, step0, n):
        return engine.decode(params, ds, queue, zeros, zeros, step0, n, args.temperature, top_k, special=no_stop)

    # Compile everything once (prefill, decode) before timing.
    t0 = time.perf_counter()
    ds = _sync(engine.prefill(params, [prompt], batch, t_max))
    ds = _sync(decode(ds, 0, 1)[0])
    compile_s = time.perf_counter() - t0

    prefill, ttft, step = [], [], []
    n_chunks = math.ceil((max_tokens - 1) / engine.chunk_size)
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ds = _sync(engine.prefill(params, [prompt], batch, t_max))
        t1 = time.perf_counter()
        out = _sync(decode(ds, 0, 1))
        t2 = time.perf_counter()
        prefill.append(t1 - t0)
        ttft.append(t2 - t0)
        ds, steps = out[0], 1
        t3 = time.perf_counter()
        for _ in range(n_chunks):
            n = min(engine.chunk_size, max_tokens - steps)
            out = decode(ds, steps, n)
            ds, steps = out[0], steps + n
            np.asarray(out[2])  # the host reads each chunk's tokens, as generate() does
        _sync(ds)
        step.append((time.perf_counter() - t3) / (steps - 1))

    step_s = statistics.median(step)
    dtype_bytes = jnp.dtype(cfg.compute_dtype).itemsize
    weight_bytes = (cfg.num_params() - cfg.padded_vocab_size * cfg.n_embd) * dtype_bytes
    kv_bytes = 2 * cfg.n_layer * batch * t_max * cfg.n_kv_head * cfg.head_dim * dtype_bytes
    peak_bw = hardware.peak_memory_bandwidth()
    return {
        "batch": batch,
        "t_max": t_max,
        "compile_s": compile_s,
        "prefill_ms": 1000 * statistics.median(prefill),
        "ttft_ms": 1000 * statistics.median(ttft),
        "step_ms": 1000 * step_s,
        "tok_s": batch / step_s,
        "bytes_per_step": weight_bytes + kv_bytes,
        "bw_util": None if peak_bw is None else (weight_bytes + kv_bytes) / step_s / peak_bw,
    }


def main(argv=None):
    args = parse_args(argv)
    model, tokenizer, what = build(args)
    cfg = model.config
    engine = Engine(model, tokenizer, chunk_size=args.chunk)
    params = engine.params()
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, cfg.vocab_size - 9, size=args.prompt_tokens).tolist()
    results = [bench_batch(engine, params, prompt, int(b), args) for b in args.batch_sizes.split(",")]

    dev = jax.devices()[0]
    peak = hardware.peak_memory_bytes()
    print(f"device: {jax.device_count()} x {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(
        f"model: {what}, L={cfg.n_layer} C={cfg.n_embd} H={cfg.n_head} V={cfg.vocab_size} {cfg.compute_dtype}, "
        f"{cfg.num_params():,} params; prompt {args.prompt_tokens}, decode {args.decode_tokens}, chunk {args.chunk}, "
        f"temperature {args.temperature}, top_k {args.top_k or 'off'}"
    )
    head = ("batch", "T_max", "compile s", "prefill ms", "TTFT ms", "step ms", "tok/s", "MB read/step", "BW util")
    rows = [
        (
            r["batch"],
            r["t_max"],
            f"{r['compile_s']:.1f}",
            f"{r['prefill_ms']:.2f}",
            f"{r['ttft_ms']:.2f}",
            f"{r['step_ms']:.3f}",
            f"{r['tok_s']:,.0f}",
            f"{r['bytes_per_step'] / 1e6:.2f}",
            "n/a (no peak for this device)" if r["bw_util"] is None else f"{100 * r['bw_util']:.1f}%",
        )
        for r in results
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for line in (head, *rows):
        print("| " + " | ".join(str(x).rjust(w) for x, w in zip(line, widths)) + " |")
    if peak is not None:
        print(f"peak device memory: {peak / 2**30:.2f} GiB")
    return results


if __name__ == "__main__":
    main()
