"""Batched against serial serving: N concurrent chats to a local server on 127.0.0.1, total time and per-request latency.

    python -m bench.serve                                  # tiny shape (d4, V 4096, T 256), random weights
    python -m bench.serve --source sft                     # a trained checkpoint
    python -m bench.serve --concurrency 16 --rounds 3 --max_tokens 64

For each mode it starts the real server (``nanochat_jax.serve_app`` under
uvicorn) in a child process: serial = ``max_batch 1`` (each worker decodes one
request at a time, as before batching), batched = ``max_batch`` N. The client
(this process) sends one untimed round of N concurrent chats (it compiles
the shapes), then ``--rounds`` timed rounds, and stops the server. Every chat
has its own prompt and seed, so both modes must stream the same replies (checked).
Reported: the median round's wall time, and per-request latency (request
sent to ``done``) p50/p95 over all timed requests, and the batch sizes the
server reports in ``/stats``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import numpy as np

TOPICS = ["the weather", "prime numbers", "a haiku about rain", "JAX", "sorting a list", "the moon", "bread", "chess",
          "python dicts", "the ocean", "tea", "bicycles", "a short story", "graphs", "coffee", "mountains"]  # fmt: skip


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--vocab_size", type=int, default=4096, help="of the demo tokenizer (random-weight model)")
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--source", default=None, help="a project checkpoint stage instead of random weights")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max_tokens", type=int, default=64)
    p.add_argument("--window_ms", type=float, default=10.0, help="batched mode's gather window (the server default)")
    p.add_argument("--serve", default=None, metavar="MAX_BATCH:PORT", help=argparse.SUPPRESS)  # the child process
    return p.parse_args(argv)


def serve(args) -> None:
    """Child process: build the model and run the app until terminated."""
    import uvicorn

    from nanochat_jax.serve_app import create_app
    from nanochat_jax.serve_workers import build_workers

    max_batch, port = map(int, args.serve.split(":"))
    if args.source:
        from nanochat_jax.checkpoint import load_model

        model, tokenizer, _ = load_model(args.source, compute_dtype="float32")
    else:
        from bench.decode_vs import random_checkpoint
        from nanochat_jax.convert import build_model, state_dict_to_params
        from nanochat_jax.demo import demo_model_and_tokenizer
        from nanochat_jax.gpt import GPTConfig

        _, tokenizer = demo_model_and_tokenizer(vocab_size=args.vocab_size, sequence_len=args.seq_len)
        sd, model_config = random_checkpoint(args.depth, tokenizer.get_vocab_size(), args.seq_len)
        config = GPTConfig(**model_config, compute_dtype="float32")
        model = build_model(config, state_dict_to_params(sd, config))
    app = create_app(build_workers(model, tokenizer), tokenizer, max_tokens=args.max_tokens, max_batch=max_batch,
                     batch_window_s=args.window_ms / 1000)  # fmt: skip
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def chats(n: int, max_tokens: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Tell me about {TOPICS[i % len(TOPICS)]}, please ({i})."}],
             "max_tokens": max_tokens, "seed": i} for i in range(n)]  # fmt: skip


async def one_round(url: str, bodies: list[dict]) -> tuple[float, list[float], list[str]]:
    import httpx

    async def one(ac, body):
        t0 = time.perf_counter()
        r = await ac.post("/chat/completions", json=body)
        r.raise_for_status()
        events = [json.loads(b[len("data: "):]) for b in r.text.split("\n\n") if b.startswith("data: ")]
        if events[-1] != {"done": True} or any("error" in e for e in events):
            raise RuntimeError(f"bad reply: {events[-3:]}")
        return time.perf_counter() - t0, "".join(e.get("token", "") for e in events)

    async with httpx.AsyncClient(base_url=url, timeout=600) as ac:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(ac, b) for b in bodies))
        return time.perf_counter() - t0, [r[0] for r in results], [r[1] for r in results]


def run_mode(args, max_batch: int) -> dict:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "bench.serve", "--serve", f"{max_batch}:{port}", "--depth", str(args.depth),
            "--vocab_size", str(args.vocab_size), "--seq_len", str(args.seq_len), "--max_tokens", str(args.max_tokens),
            "--window_ms", str(args.window_ms)] + (["--source", args.source] if args.source else [])  # fmt: skip
    child = subprocess.Popen(argv, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server (max_batch {max_batch}) did not come up")
            time.sleep(0.5)
        bodies = chats(args.concurrency, args.max_tokens)
        _, _, replies = asyncio.run(one_round(url, bodies))  # untimed: compiles
        totals, latencies = [], []
        for _ in range(args.rounds):
            total, lat, again = asyncio.run(one_round(url, bodies))
            if again != replies:
                raise RuntimeError("replies changed between rounds")
            totals.append(total)
            latencies += lat
        stats = httpx.get(url + "/stats", timeout=30).json()
    finally:
        child.terminate()
        child.wait(30)
    return {"total": statistics.median(totals), "p50": float(np.percentile(latencies, 50)),
            "p95": float(np.percentile(latencies, 95)), "replies": replies,
            "batch_sizes": stats["workers"][0]["batch_sizes"], "tokens": stats["workers"][0]["tokens_generated"]}  # fmt: skip


def main(argv=None):
    args = parse_args(argv)
    if args.serve:
        return serve(args)
    modes = {"serial": run_mode(args, 1), "batched": run_mode(args, args.concurrency)}
    if modes["serial"]["replies"] != modes["batched"]["replies"]:
        raise SystemExit("batched replies differ from serial ones")
    n = args.concurrency
    print(f"{n} concurrent chats, max_tokens {args.max_tokens}, {args.rounds} timed rounds; replies equal in both modes; "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    for name, m in modes.items():
        print(f"{name:8s}: round {m['total']:.2f} s (median), latency p50 {m['p50']:.2f} s, p95 {m['p95']:.2f} s; "
              f"{m['tokens'] / (args.rounds + 1) / m['total']:,.0f} tok/s; batch sizes {m['batch_sizes']}")
    s, b = modes["serial"], modes["batched"]
    print(f"batched/serial: round time {s['total'] / b['total']:.2f}x faster, p50 latency {s['p50'] / b['p50']:.2f}x, "
          f"p95 {s['p95'] / b['p95']:.2f}x")
    return modes


if __name__ == "__main__":
    main()
