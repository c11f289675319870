"""Chat with a trained model in the terminal (nanochat's ``scripts/chat_cli.py``).

    python -m nanochat_jax.chat                                    # interactive, latest SFT checkpoint
    python -m nanochat_jax.chat -i mid -p "Why is the sky blue?"   # one reply, then exit

The conversation is kept as tokens, the model's replies as it wrote them
(re-encoding their text could split it differently). ``clear`` starts over,
``quit``/``exit`` or end of input leaves. :func:`run_chat` takes any streams.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from nanochat_jax import cli
from nanochat_jax.checkpoint import STAGE_DIRS, CheckpointNotFoundError, load_model, stage_dir
from nanochat_jax.engine import Engine
from nanochat_jax.hardware import default_compute_dtype
from nanochat_jax.streaming import stream_text

def _recorded(columns, reply: list[int]):
    """The sampled tokens of ``Engine.generate`` columns, each also appended to ``reply``."""
    for column, _ in columns:
        reply.append(column[0])
        yield column[0]


def _read_line(prompt: str, stdin: TextIO, stdout: TextIO) -> str:
    """One user line ('' at end of input); the real terminal goes through input() for line editing."""
    if stdin is sys.stdin and stdout is sys.stdout:
        try:
            return input(prompt) + "\n"
        except EOFError:
            return ""
    stdout.write(prompt)
    stdout.flush()
    return stdin.readline()


def run_chat(
    model,
    tokenizer,
    *,
    prompt: str | None = None,
    temperature: float = 0.6,
    top_k: int | None = 50,
    max_tokens: int = 256,
    seed: int = 42,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    engine=None,
) -> list[int]:
    """The chat loop; returns the final conversation tokens.

    With ``prompt`` it answers once and returns (only the reply is printed,
    so the output can be piped); otherwise it reads user lines from
    ``stdin`` until ``quit``/``exit``/end of input.
    """
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    engine = engine or Engine(model, tokenizer)
    bos = tokenizer.get_bos_token_id()
    assistant_end = tokenizer.encode_special("<|assistant_end|>")

    conversation = [bos]
    if prompt is None:
        stdout.write("\nNanoChat Interactive Mode\n" + "-" * 50 + "\n")
        stdout.write("Type 'quit' or 'exit' to end the conversation\nType 'clear' to start a new conversation\n" + "-" * 50 + "\n")

    while True:
        if prompt is not None:
            user_input = prompt
        else:
            try:
                line = _read_line("\nUser: ", stdin, stdout)
            except KeyboardInterrupt:
                line = ""
            if not line:  # end of input or Ctrl-C
                stdout.write("\nGoodbye!\n")
                break
            user_input = line.strip()
            if user_input.lower() in ("quit", "exit"):
                stdout.write("Goodbye!\n")
                break
            if user_input.lower() == "clear":
                conversation = [bos]
                stdout.write("Conversation cleared.\n")
                continue
            if not user_input:
                continue

        turn = tokenizer.render_for_completion({"messages": [{"role": "user", "content": user_input}]})
        conversation += turn[1:]  # the conversation already starts with <|bos|>
        if prompt is None:
            stdout.write("\nAssistant: ")
        reply: list[int] = []
        columns = engine.generate(conversation, num_samples=1, max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed)
        for piece, _ in stream_text(tokenizer, _recorded(columns, reply), (assistant_end, bos)):
            stdout.write(piece)
            stdout.flush()
        stdout.write("\n")
        stdout.flush()
        # The model's own <|assistant_end|> closes the turn; add one when it stopped otherwise.
        if not reply or reply[-1] != assistant_end:
            if reply and reply[-1] == bos:
                reply.pop()
            reply.append(assistant_end)
        conversation += reply
        if prompt is not None:
            break
    return conversation


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nanochat_jax.chat", description="Chat with a nanochat_jax model.")
    p.add_argument("-i", "--source", default="sft", choices=tuple(STAGE_DIRS), help="which stage's checkpoint to load (default: sft)")
    p.add_argument("-g", "--model-tag", "--model_tag", dest="model_tag", default=None, help="model tag, e.g. d20 (default: the largest)")
    p.add_argument("-s", "--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("-p", "--prompt", default="", help="answer this one prompt, print the reply and exit")
    p.add_argument("-t", "--temperature", type=float, default=0.6, help="sampling temperature; 0 = greedy (default: 0.6)")
    p.add_argument("-k", "--top-k", "--top_k", dest="top_k", type=int, default=50, help="top-k sampling; 0 = off (default: 50)")
    p.add_argument("-m", "--max-tokens", "--max_tokens", dest="max_tokens", type=int, default=256, help="reply length cap (default: 256)")
    p.add_argument("--seed", type=int, default=42, help="sampling seed (default: 42, nanochat's)")
    p.add_argument(
        "-d", "--dtype", default=None, choices=("float32", "bfloat16"), help="compute dtype (default: bfloat16 on GPU/TPU, float32 on CPU)"
    )
    args = p.parse_args(argv)
    if args.max_tokens < 1:
        p.error("--max-tokens must be >= 1")
    if args.temperature < 0:
        p.error("--temperature must be >= 0")
    return args


def main(argv=None) -> int:
    """Load the checkpoint and chat; a missing or corrupt checkpoint raises (``cli.main`` prints it)."""
    args = parse_args(argv)
    dtype = args.dtype or default_compute_dtype()
    try:
        model, tokenizer, _ = load_model(args.source, model_tag=args.model_tag, step=args.step, compute_dtype=dtype)
    except CheckpointNotFoundError as e:
        raise CheckpointNotFoundError(
            f"cannot load a '{args.source}' checkpoint from {stage_dir(args.source)}: {e} "
            f"(set $NANOCHAT_JAX_BASE_DIR if your checkpoints live elsewhere; -i picks another stage)"
        ) from e
    run_chat(
        model,
        tokenizer,
        prompt=args.prompt or None,
        temperature=args.temperature,
        top_k=args.top_k if args.top_k > 0 else None,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    return 0


if __name__ == "__main__":
    cli.main(main)
