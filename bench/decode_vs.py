"""Decode side by side: the project's Engine against nanochat's engine algorithm in PyTorch, same weights, same tokens.

    python -m bench.decode_vs                                   # tiny shape (d4, V 4096, T 256), random weights
    python -m bench.decode_vs --source base --model_tag tiny    # a trained checkpoint of the project
    python -m bench.decode_vs --nanochat ~/nanochat             # a nanochat checkout's Engine as the torch side

Both sides get one checkpoint: nanochat's state dict (random weights, every
matrix non-zero, from ``bench.torch_reference``) converted to the project's
params by ``nanochat_jax.convert``, or the other way round for ``--source``.
Each repeat times ``generate_batch(prompt, num_samples=B, max_tokens=N)`` end
to end on each side (prefill, cache copies, sampling, the token loop), the two
sides alternating; medians are reported. The sequences must be identical
(greedy), otherwise the run fails. The torch side is ``bench.torch_decode``
(written from nanochat's engine description) unless ``--nanochat PATH`` names
a classic nanochat checkout, whose ``nanochat.engine.Engine`` is run instead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from bench.decode import SyntheticTokenizer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--vocab_size", type=int, default=4096)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--source", default=None, help="a project checkpoint stage (base, mid, sft, rl) instead of random weights")
    p.add_argument("--model_tag", default=None)
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--prompt_tokens", type=int, default=32)
    p.add_argument("--max_tokens", type=int, default=128)
    p.add_argument("--batch_sizes", default="1,8", help="num_samples per generate_batch call")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--torch_threads", type=int, default=0, help="0 = torch's default")
    p.add_argument("--nanochat", default=None, metavar="PATH", help="run a nanochat checkout's Engine as the torch side")
    return p.parse_args(argv)


def random_checkpoint(depth: int, vocab_size: int, seq_len: int, seed: int = 0):
    """(nanochat state dict as numpy, model_config dict): ``bench.torch_reference``'s GPT with every matrix random."""
    import torch

    from bench.torch_reference import GPT, GPTConfig

    cfg = GPTConfig.from_depth(depth, vocab_size=vocab_size, sequence_len=seq_len)
    torch.manual_seed(seed)
    model = GPT(cfg)
    model.randomize_weights(seed=seed)
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}, dict(vars(cfg))


def checkpoint(args):
    """(nanochat state dict as numpy, nanochat model_config dict, tokenizer) for both sides."""
    from nanochat_jax.convert import model_params, params_to_state_dict

    if args.source:
        from nanochat_jax.checkpoint import load_model

        model, tokenizer, _ = load_model(args.source, args.model_tag, args.step, compute_dtype="float32")
        cfg = model.config
        return params_to_state_dict(model_params(model), cfg), cfg.model_config_dict(), tokenizer
    sd, model_config = random_checkpoint(args.depth, args.vocab_size, args.seq_len)
    return sd, model_config, SyntheticTokenizer(args.vocab_size)


def jax_engine(sd, model_config, tokenizer):
    from nanochat_jax.convert import build_model, state_dict_to_params
    from nanochat_jax.engine import Engine
    from nanochat_jax.gpt import GPTConfig

    config = GPTConfig(**model_config, compute_dtype="float32")
    return Engine(build_model(config, state_dict_to_params(sd, config)), tokenizer)


def torch_engine(sd, model_config, tokenizer, nanochat_path: str | None):
    """``bench.torch_decode.TorchEngine``, or nanochat's own Engine from a checkout, on the same weights (fp32, CPU)."""
    import torch

    state = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in sd.items()}
    if nanochat_path is None:
        from bench.torch_decode import TorchEngine
        from bench.torch_reference import GPT, GPTConfig

        model = GPT(GPTConfig(**model_config))
        model.load_state_dict(state, strict=True)
        return TorchEngine(model.eval(), {n: tokenizer.encode_special(n) for n in SyntheticTokenizer.SPECIALS}, tokenizer)
    sys.path.insert(0, os.path.abspath(os.path.expanduser(nanochat_path)))
    from nanochat.engine import Engine
    from nanochat.gpt import GPT, GPTConfig

    with torch.device("meta"):
        model = GPT(GPTConfig(**model_config))
    model.to_empty(device="cpu")
    model.init_weights()  # builds the rotary buffers, which checkpoints do not hold
    model.load_state_dict(state, strict=True, assign=True)
    return Engine(model.eval(), tokenizer)


def time_side(engine, prompt, batch, max_tokens) -> tuple[float, list[list[int]]]:
    t0 = time.perf_counter()
    seqs, _ = engine.generate_batch(prompt, num_samples=batch, max_tokens=max_tokens, temperature=0.0, seed=42)
    return time.perf_counter() - t0, seqs


def main(argv=None):
    args = parse_args(argv)
    import jax
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    sd, model_config, tokenizer = checkpoint(args)
    jx, pt = jax_engine(sd, model_config, tokenizer), torch_engine(sd, model_config, tokenizer, args.nanochat)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, model_config["vocab_size"] - len(SyntheticTokenizer.SPECIALS), args.prompt_tokens).tolist()
    torch_name = "nanochat checkout" if args.nanochat else "bench.torch_decode"
    print(f"jax {jax.__version__} ({jax.devices()[0].device_kind}), torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"model {model_config}; prompt {args.prompt_tokens}, max_tokens {args.max_tokens}, greedy; torch side: {torch_name}")
    rows = []
    for batch in map(int, args.batch_sizes.split(",")):
        _, want = time_side(pt, prompt, batch, args.max_tokens)  # warm-up (and JAX's compiles)
        _, got = time_side(jx, prompt, batch, args.max_tokens)
        if got != want:
            raise SystemExit(f"batch {batch}: JAX and torch sequences differ")
        times = {"jax": [], "torch": []}
        for _ in range(args.repeats):
            for side, eng in (("jax", jx), ("torch", pt)):
                dt, seqs = time_side(eng, prompt, batch, args.max_tokens)
                if seqs != want:
                    raise SystemExit(f"batch {batch}: {side} sequences changed between repeats")
                times[side].append(dt)
        new = sum(len(s) - len(prompt) for s in want)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((batch, new, med["jax"], med["torch"]))
        print(f"batch {batch}: {new} tokens, equal; JAX {1e3 * med['jax']:.1f} ms ({new / med['jax']:,.0f} tok/s) "
              f"vs torch {1e3 * med['torch']:.1f} ms ({new / med['torch']:,.0f} tok/s): JAX/torch = {med['torch'] / med['jax']:.2f}x  "
              f"[jax {', '.join(f'{1e3 * t:.1f}' for t in times['jax'])}; torch {', '.join(f'{1e3 * t:.1f}' for t in times['torch'])} ms]")
    return rows


if __name__ == "__main__":
    main()
