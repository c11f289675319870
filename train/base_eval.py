"""Base-model evaluation: ``python -m train.base_eval -i base -g d20 [--eval core,bpb,sample]``.

nanochat's ``base_eval.py`` (CORE, ``nanochat_jax.core_eval``) and ``base_loss.py``
(train/val bits per byte over ``--split_tokens`` tokens of the pretraining data,
then greedy continuations of the 7 fixed prompts) in one command. Results go to
``$NANOCHAT_JAX_BASE_DIR/eval/<source>/<tag>/{core,bpb}.json`` and the report
sections "Base model evaluation" / "Base model loss".
"""

from __future__ import annotations

import argparse

import jax
from flax import nnx

from nanochat_jax import cli, results
from nanochat_jax.common import print0

EVALS = ("core", "bpb", "sample")


def core_eval(model, tokenizer, mesh, *, source, tag, step, max_per_task, bundle_dir) -> dict:
    from nanochat_jax.core_eval import evaluate_core

    core = evaluate_core(model, tokenizer, bundle_dir, max_per_task, mesh=mesh)
    name = "CORE (embedded slice: not comparable to CORE)" if core["slice"] else "CORE metric"
    print0(f"{name}: {core['core_metric']:.4f}")
    record = {**core, "step": step, "max_per_task": max_per_task}
    results.save_results(source, tag, "core", record)
    results.write_section("Base model evaluation", [
        {"Model": f"{source}/{tag} step {step}", name: core["core_metric"], "Bundle": core["bundle"], "max_per_task": max_per_task},
        core["centered_results"],
    ])  # fmt: skip
    return record


def bpb_eval(model, tokenizer, mesh, meta: dict, *, split_tokens: int, device_batch_size: int, data_dir) -> dict:
    """base_loss.py: ``split_tokens // (rows * seq_len)`` steps of each split's pretraining loader."""
    from nanochat_jax.data_streams import iter_global_batches
    from nanochat_jax.dataloader import DEFAULT_STREAMS, build_pretrain_loader, split_stream_count
    from nanochat_jax.dataset import resolve_data_dir
    from nanochat_jax.loss_eval import evaluate_bpb

    seq_len = model.config.sequence_len
    rows = device_batch_size * jax.device_count()  # one batch over all processes, split by data streams
    steps = split_tokens // (rows * seq_len)
    if steps < 1:
        raise ValueError(f"--split_tokens={split_tokens} is less than one batch ({rows} rows x {seq_len} tokens)")
    directory = resolve_data_dir(meta.get("data_dir", "") if data_dir is None else data_dir)
    graphdef, params = nnx.split(model)
    bpb = {}
    for split in ("train", "val"):
        streams = split_stream_count(DEFAULT_STREAMS, rows, split, directory)
        loader = build_pretrain_loader(tokenizer, directory, split, rows, seq_len, streams=streams, prefetch=0)
        try:
            bpb[f"{split}_bpb"] = evaluate_bpb(graphdef, params, iter_global_batches(loader, mesh), steps, tokenizer.token_bytes())
        finally:
            loader.close()
        print0(f"{split} bpb: {bpb[f'{split}_bpb']:.4f}")
    return {**bpb, "split_tokens": steps * rows * seq_len, "data_dir": str(directory)}


def evaluate(tag: str | None = None, step: int | None = None, *, source="base", evals=("core", "bpb", "sample"), max_per_task=-1,
             bundle_dir=None, split_tokens=20 * 524288, device_batch_size=32, data_dir=None) -> dict:  # fmt: skip
    """Run the chosen evaluations on a checkpoint; returns ``{"tag", "step", "core"?, "bpb"?, "samples"?}``."""
    from nanochat_jax.checkpoint import load_stage
    from nanochat_jax.sharding import make_mesh
    from train.pretrain import greedy_samples

    unknown = set(evals) - set(EVALS)
    if unknown or not evals:
        raise ValueError(f"--eval: unknown evaluation(s) {sorted(unknown)}; choose from {','.join(EVALS)}")
    mesh = make_mesh()
    model, tokenizer, meta, tag = load_stage(source, tag, step, mesh)
    out = {"tag": tag, "step": meta["step"]}
    if "core" in evals:
        out["core"] = core_eval(model, tokenizer, mesh, source=source, tag=tag, step=meta["step"], max_per_task=max_per_task, bundle_dir=bundle_dir)
    loss_items = []
    if "bpb" in evals:
        out["bpb"] = bpb_eval(model, tokenizer, mesh, meta, split_tokens=split_tokens, device_batch_size=device_batch_size, data_dir=data_dir)
        results.save_results(source, tag, "bpb", {**out["bpb"], "step": meta["step"]})
        loss_items.append({"train bpb": out["bpb"]["train_bpb"], "val bpb": out["bpb"]["val_bpb"]})
    if "sample" in evals:
        out["samples"] = greedy_samples(model, tokenizer, max_tokens=16)
        print0("\n".join(f"sample: {s!r}" for s in out["samples"]))
        loss_items.append({f"sample {i}": s for i, s in enumerate(out["samples"])})
    if loss_items:
        results.write_section("Base model loss", [{"Model": f"{source}/{tag} step {meta['step']}"}, *loss_items])
    return out


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Evaluate a base checkpoint: CORE, train/val bpb, samples (nanochat's base_eval + base_loss)")
    p.add_argument("-i", "--source", default="base", help="checkpoint stage: base|mid|sft|rl")
    p.add_argument("-g", "--model_tag", default=None, help="model tag (default: the largest d<N>)")
    p.add_argument("-s", "--step", type=int, default=None, help="step (default: the latest)")
    p.add_argument("--max_per_task", type=int, default=-1, help="CORE items per task (-1 = all)")
    p.add_argument("--bundle_dir", default=None, help='eval bundle: default = downloaded DCLM bundle, "slice" = embedded slice, or a directory')
    p.add_argument("--eval", default="core,bpb,sample", help="comma-separated: core, bpb, sample")
    p.add_argument("--split_tokens", type=int, default=20 * 524288, help="tokens per split for bpb")
    p.add_argument("--device_batch_size", type=int, default=32, help="bpb rows per device")
    p.add_argument("--data_dir", default=None, help='pretraining data for bpb (default: the checkpoint\'s; "sample" = embedded corpus)')
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse(argv)
    return evaluate(a.model_tag, a.step, source=a.source, evals=tuple(e for e in a.eval.split(",") if e), max_per_task=a.max_per_task,
                    bundle_dir=a.bundle_dir, split_tokens=a.split_tokens, device_batch_size=a.device_batch_size, data_dir=a.data_dir)  # fmt: skip


if __name__ == "__main__":
    cli.main(main)
