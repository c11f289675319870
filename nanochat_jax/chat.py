"""Chat with a trained model in the terminal (nanochat's ``scripts/chat_cli.py``).

    python -m nanochat_jax.chat                      # interactive, latest SFT checkpoint
    python -m nanochat_jax.chat -i mid -p "Why is the sky blue?"   # one reply, then exit

The conversation is kept as one token list, exactly as the model was trained
to read it: ``<|bos|>`` then, per turn, ``<|user_start|> text <|user_end|>
<|assistant_start|>`` followed by the streamed reply and ``<|assistant_end|>``.
Typing ``clear`` starts over, ``quit``/``exit`` (or end of input) leaves.

The loop lives in :func:`run_chat`, which takes any model/tokenizer and any
input/output streams, so it can be driven by tests and other front ends;
:func:`main` only parses flags and loads the checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

STAGES = ("base", "mid", "sft", "rl")
# How each stage's checkpoints come into being (printed when none exists).
CREATE_HINTS = {
    "base": "python -m train.pretrain --config=configs/tiny.py",
    "mid": "python -m nanochat_jax.convert to-jax --src <nanochat mid_checkpoints/d20> --out <this directory>"
    " (midtraining is not in nanochat_jax yet; -i base chats with a base model)",
    "sft": "python -m nanochat_jax.convert to-jax --src <nanochat chatsft_checkpoints/d20> --out <this directory>"
    " (SFT is not in nanochat_jax yet; -i base chats with a base model)",
    "rl": "python -m nanochat_jax.convert to-jax --src <nanochat chatrl_checkpoints/d20> --out <this directory>"
    " (RL is not in nanochat_jax yet; -i base chats with a base model)",
}


class StreamPrinter:
    """Prints a reply token by token without ever splitting a UTF-8 character.

    A multi-byte character can span tokens; decoding a prefix then ends in
    U+FFFD. Re-decoding the whole reply and printing only once the text no
    longer ends in U+FFFD prints every character exactly once, whole.
    """

    def __init__(self, tokenizer, out: TextIO):
        self.tokenizer = tokenizer
        self.out = out
        self.tokens: list[int] = []
        self.printed = 0

    def add(self, token: int) -> None:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens)
        if not text.endswith("\ufffd"):
            self._emit(text)

    def finish(self) -> None:
        """Print whatever is left, replacement characters included (the reply ended mid-character)."""
        self._emit(self.tokenizer.decode(self.tokens))

    def _emit(self, text: str) -> None:
        if len(text) > self.printed:
            self.out.write(text[self.printed :])
            self.out.flush()
            self.printed = len(text)


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
    from nanochat_jax.engine import Engine

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    engine = engine or Engine(model, tokenizer)
    bos = tokenizer.get_bos_token_id()
    user_start, user_end = tokenizer.encode_special("<|user_start|>"), tokenizer.encode_special("<|user_end|>")
    assistant_start = tokenizer.encode_special("<|assistant_start|>")
    assistant_end = tokenizer.encode_special("<|assistant_end|>")
    stops = (assistant_end, bos)

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

        conversation += [user_start, *tokenizer.encode(user_input), user_end, assistant_start]
        if prompt is None:
            stdout.write("\nAssistant: ")
        printer = StreamPrinter(tokenizer, stdout)
        reply: list[int] = []
        for column, _ in engine.generate(
            conversation, num_samples=1, max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed
        ):
            token = column[0]
            reply.append(token)
            if token in stops:
                break
            printer.add(token)
        printer.finish()
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
    p.add_argument("-i", "--source", default="sft", choices=STAGES, help="which stage's checkpoint to load (default: sft)")
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
    args = parse_args(argv)
    import jax

    from nanochat_jax.checkpoint import CheckpointNotFoundError, load_model, stage_dir

    dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    try:
        model, tokenizer, _ = load_model(args.source, model_tag=args.model_tag, step=args.step, compute_dtype=dtype)
    except (CheckpointNotFoundError, FileNotFoundError) as e:
        print(
            f"error: cannot load a '{args.source}' checkpoint from {stage_dir(args.source)}\n"
            f"  {e}\n"
            f"  create one with: {CREATE_HINTS[args.source]}\n"
            f"  (set $NANOCHAT_JAX_BASE_DIR if your checkpoints live elsewhere; -i picks another stage)",
            file=sys.stderr,
        )
        return 2
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
    sys.exit(main())
