"""Chat model evaluation: ``python -m train.chat_eval -i sft -a 'ARC-Easy|GSM8K'`` (nanochat's scripts/chat_eval.py).

Runs each named task on a mid/sft/rl checkpoint (default: all six), prints
its accuracy and, when all six ran, ChatCORE; writes
``eval/<source>/<tag>/chat.json`` and the report section "Chat evaluation <source>".
``--task-dir embedded`` evaluates offline on the slices shipped in the package
(ARC *validation*, MMLU test[:1024], GSM8K test[:500], all of HumanEval): the
results file and the report say so, since those are not benchmark scores.
"""

from __future__ import annotations

import argparse

from nanochat_jax import cli, hardware, results, sharding
from nanochat_jax.chat_eval import BASELINES, chatcore, evaluate_task
from nanochat_jax.checkpoint import load_stage
from nanochat_jax.common import print0
from nanochat_jax.tasks import ARC, EMBEDDED, GSM8K, MMLU, HumanEval, SpellingBee

SLICES = "embedded slices (ARC validation, MMLU test[:1024], GSM8K test[:500], HumanEval all): not benchmark scores"


def _task(name: str, task_dir: str):
    """nanochat's task table; ``task_dir`` points the hub datasets at a local copy (``embedded``: the shipped slices)."""
    d = {"data_dir": task_dir} if task_dir else {}
    arc_split = "validation" if task_dir == EMBEDDED else "test"  # ARC test is not shipped
    tasks = {
        "ARC-Easy": lambda: ARC("ARC-Easy", arc_split, **d),
        "ARC-Challenge": lambda: ARC("ARC-Challenge", arc_split, **d),
        "MMLU": lambda: MMLU("all", "test", **d),
        "GSM8K": lambda: GSM8K("main", "test", **d),
        "HumanEval": lambda: HumanEval(**d),
        "SpellingBee": lambda: SpellingBee(256, "test"),
    }
    return tasks[name]()


def evaluate(source: str, tag: str | None = None, step: int | None = None, *, tasks: str = "|".join(BASELINES),
             max_problems: int | None = None, max_new_tokens: int = 512, num_samples: int = 1, temperature: float = 0.0,
             top_k: int = 50, batch_size: int = 8, task_dir: str = "", compute_dtype: str | None = None) -> dict:
    """Evaluate one checkpoint on ``tasks`` ('|'-separated); returns what goes into the results file."""
    names = [n for n in tasks.split("|") if n]
    unknown = [n for n in names if n not in BASELINES]
    if unknown or not names:
        raise ValueError(f"-a/--task-name: unknown task(s) {unknown or tasks!r}; "
                         f"expected '|'-separated names among {list(BASELINES)}")
    sharding.maybe_initialize_distributed()
    mesh = sharding.make_mesh()
    dtype = compute_dtype or hardware.default_compute_dtype()
    model, tokenizer, meta, tag = load_stage(source, tag, step, mesh, compute_dtype=dtype)
    accuracies = {}
    for name in names:
        acc = evaluate_task(_task(name, task_dir), model, tokenizer, batch_size=batch_size, num_samples=num_samples,
                            max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, max_problems=max_problems,
                            mesh=mesh)  # fmt: skip
        accuracies[name] = acc
        print0(f"{name} accuracy: {100 * acc:.2f}%")
    score = chatcore(accuracies) if set(accuracies) == set(BASELINES) else None  # nanochat: only when every task ran
    if score is not None:
        print0(f"ChatCORE metric: {score:.4f}")
    settings = {"source": source, "model_tag": tag, "step": meta["step"], "data": SLICES if task_dir == EMBEDDED else task_dir or "hub",
                "max_problems": max_problems, "max_new_tokens": max_new_tokens, "num_samples": num_samples,
                "temperature": temperature, "top_k": top_k, "batch_size": batch_size}  # fmt: skip
    record = {"results": accuracies, "chatcore": score, **settings}
    results.save_results(source, tag, "chat", record)
    chatcore_item = [] if score is None else [{"ChatCORE metric": score}]
    results.write_section(f"Chat evaluation {source}", [settings, accuracies, *chatcore_item])
    return record


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Evaluate a chat model (nanochat's chat_eval flags).")
    p.add_argument("-i", "--source", required=True, choices=("base", "mid", "sft", "rl"), help="checkpoint stage")
    p.add_argument("-a", "--task-name", default="|".join(BASELINES), help="'|'-separated tasks (default: all six)")
    p.add_argument("-d", "--dtype", default="", help="compute dtype, e.g. bfloat16|float32 (default: the hardware's)")
    p.add_argument("-t", "--temperature", type=float, default=0.0)
    p.add_argument("-m", "--max-new-tokens", type=int, default=512)
    p.add_argument("-n", "--num-samples", type=int, default=1)
    p.add_argument("-k", "--top-k", type=int, default=50)
    p.add_argument("-b", "--batch-size", type=int, default=8, help="problems per forward (categorical) or per decode batch (generative)")
    p.add_argument("-g", "--model-tag", default=None)
    p.add_argument("-s", "--step", type=int, default=None)
    p.add_argument("-x", "--max-problems", type=int, default=None)
    p.add_argument("--task-dir", default="", help="local task data directory; 'embedded' = the slices shipped in the package")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    return evaluate(a.source, a.model_tag, a.step, tasks=a.task_name, max_problems=a.max_problems, max_new_tokens=a.max_new_tokens,
                    num_samples=a.num_samples, temperature=a.temperature, top_k=a.top_k, batch_size=a.batch_size,
                    task_dir=a.task_dir, compute_dtype=a.dtype or None)  # fmt: skip


if __name__ == "__main__":
    cli.main(main)
