"""Chat web server, nanochat's ``chat_web.py``: the command line (the app is ``serve_app``).

    python -m nanochat_jax.serve                # sft checkpoint, http://127.0.0.1:8000
    python -m nanochat_jax.serve -i rl -n 2     # rl checkpoint, 2 device replicas
    python -m nanochat_jax.serve --demo         # tiny random model, no checkpoint needed

Loopback by default and no CORS: nanochat's 0.0.0.0 with CORS ``*`` let any
web page the user visits drive the model. ``--host`` exposes it on purpose.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence

import jax
import uvicorn
from pydantic import ValidationError

from nanochat_jax import cli
from nanochat_jax.checkpoint import STAGE_DIRS, CheckpointNotFoundError, load_model
from nanochat_jax.errors import UsageError
from nanochat_jax.demo import demo_model_and_tokenizer
from nanochat_jax.hardware import default_compute_dtype
from nanochat_jax.serve_app import create_app, logger
from nanochat_jax.serve_batcher import DEFAULT_MAX_BATCH, DEFAULT_WINDOW_S
from nanochat_jax.serve_request import Sampling, describe_errors
from nanochat_jax.serve_workers import SERVE_CHUNK_SIZE, Worker, build_workers


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nanochat_jax.serve", description="Chat web UI and SSE API for a nanochat_jax model")
    p.add_argument("-i", "--source", default="sft", choices=tuple(STAGE_DIRS), help="checkpoint stage to load (default: sft)")
    p.add_argument("-g", "--model-tag", default=None, help="model tag (default: the stage's largest model)")
    p.add_argument("-s", "--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("-t", "--temperature", type=float, default=0.8, help="default sampling temperature (default: 0.8)")
    p.add_argument("-k", "--top-k", type=int, default=50, help="default top-k (default: 50)")
    p.add_argument("-m", "--max-tokens", type=int, default=512, help="default max tokens per reply (default: 512)")
    p.add_argument("-p", "--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1; use 0.0.0.0 only on a trusted network)")
    p.add_argument("-n", "--num-devices", type=int, default=None, help="replicas, one per local device (default: all local devices)")
    p.add_argument(
        "-d", "--dtype", default=None, choices=["float32", "bfloat16"], help="compute dtype (default: bfloat16 on GPU/TPU, float32 on CPU)"
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=SERVE_CHUNK_SIZE,
        help=f"decode steps per compiled chunk = streaming granularity (default: {SERVE_CHUNK_SIZE})",
    )
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help=f"requests a worker decodes together (default: {DEFAULT_MAX_BATCH}; 1 = one at a time)")
    p.add_argument("--batch-window-ms", type=float, default=1000 * DEFAULT_WINDOW_S,
                   help=f"how long a batch waits for more requests after its first (default: {1000 * DEFAULT_WINDOW_S:g})")
    p.add_argument("--no-warmup", action="store_true", help="skip compiling each replica before serving (first request is then slow)")
    p.add_argument("--demo", action="store_true", help="serve a tiny random-weight model (no checkpoint needed; output is gibberish)")
    p.add_argument("--log-level", default="info", help="logging level (default: info)")
    args = p.parse_args(argv)
    if args.chunk_size < 1:
        p.error("--chunk-size must be >= 1")
    if args.max_batch < 1 or args.batch_window_ms < 0:
        p.error("--max-batch must be >= 1 and --batch-window-ms >= 0")
    try:  # the request limits bound the defaults too
        Sampling(temperature=args.temperature, top_k=args.top_k, max_tokens=args.max_tokens)
    except ValidationError as e:
        p.error(describe_errors(e.errors()))
    return args


def warmup(workers: Sequence[Worker], tokenizer, *, max_tokens: int, top_k: int, context_len: int) -> None:
    """Compile each worker's programs before the first user waits for them.

    Programs are compiled per (prompt bucket, cache bucket, top_k): a short
    prompt with the server's default max_tokens and top_k is what most first
    messages hit. The first token is enough.
    """
    prompt = tokenizer.render_for_completion({"messages": [{"role": "user", "content": "Hello"}]})
    max_tokens = max(1, min(max_tokens, context_len - len(prompt)))
    for w in workers:
        t0 = time.perf_counter()
        with jax.default_device(w.device):
            gen = w.engine.generate(prompt, num_samples=1, max_tokens=max_tokens, temperature=1.0, top_k=top_k, seed=0)
            next(gen, None)
            gen.close()
        logger.info("worker %d (%s) warmed up in %.1fs", w.id, w.device, time.perf_counter() - t0)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    devices = jax.local_devices()
    if args.num_devices is not None:
        if not 1 <= args.num_devices <= len(devices):
            raise UsageError(f"--num-devices must be between 1 and {len(devices)} (local devices: {devices})")
        devices = devices[: args.num_devices]

    if args.demo:
        model, tokenizer = demo_model_and_tokenizer()
        info = {"source": "demo (random weights)"}
    else:
        try:
            dtype = args.dtype or default_compute_dtype()
            model, tokenizer, meta = load_model(args.source, model_tag=args.model_tag, step=args.step, compute_dtype=dtype)
        except CheckpointNotFoundError as e:
            raise CheckpointNotFoundError(f"{e} (or try the UI without a checkpoint: python -m nanochat_jax.serve --demo)") from e
        info = {"source": args.source, "model_tag": args.model_tag, "step": meta.get("step", args.step)}
    info["dtype"] = str(model.config.compute_dtype)

    workers = build_workers(model, tokenizer, devices, args.chunk_size)
    logger.info("%d worker(s) on %s", len(workers), ", ".join(str(w.device) for w in workers))
    if not args.no_warmup:
        warmup(workers, tokenizer, max_tokens=args.max_tokens, top_k=args.top_k, context_len=model.config.sequence_len)
    app = create_app(workers, tokenizer, temperature=args.temperature, top_k=args.top_k, max_tokens=args.max_tokens, model_info=info,
                     max_batch=args.max_batch, batch_window_s=args.batch_window_ms / 1000)
    print(f"nanochat_jax chat UI: http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())


if __name__ == "__main__":
    cli.main(main)
