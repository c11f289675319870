"""The whole run in one command (nanochat's speedrun.sh): ``python -m train.pipeline --config=configs/tiny.py``.

Stages, in order: shard download, tokenizer (+ its evaluation), base
pretraining, base evaluation, midtraining, chat eval, SFT, chat eval, RL,
GSM8K eval, report. The config file's ``get_pipeline_config()`` gives one
section per stage (configs/pipeline.py); ``--config.<stage>.<field>=value``
overrides any of them, ``--from=<stage>`` reruns from that stage on.

Each stage runs in its own process (``--run_stage=<name>``, same arguments), so
it frees its accelerator memory when it ends and a kill stops only work that
can be resumed. The parent never imports jax. A finished stage leaves its
final result (tokenizer files, a results file, or ``pipeline/<stage>.json``
beside a checkpoint) and is skipped next time with a line saying so; a training
stage that was stopped resumes from its latest checkpoint. Every line a stage
prints is prefixed with the stage, the elapsed time and the estimated time left;
``pipeline/<stage>.log`` keeps each stage's output.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import ml_collections
from absl import flags
from ml_collections import config_flags

from nanochat_jax import cli, report
from nanochat_jax.common import STAGE_DIRS, STAGE_MODULES, atomic_write, get_base_dir
from nanochat_jax.config import ConfigError, field_names, load_config_file, lookup
from nanochat_jax.results import load_results, report_dir, section_slug, write_section


class PipelineError(ValueError):
    """A stage failed or the pipeline was asked for something it cannot do."""


# --------------------------------------------------------------------------- config


def load_pipeline_config(argv: list[str]) -> ml_collections.ConfigDict:
    """``--config=FILE`` (its ``get_pipeline_config()``) plus ``--config.<stage>.<field>=value`` overrides, locked."""
    paths = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    if not paths:
        raise ConfigError("no config given: pass --config=configs/tiny.py (CPU) or --config=configs/d20.py (8 GPUs)")
    load_config_file(paths[-1])  # the clear errors for a missing file or one without get_config()
    spec = importlib.util.spec_from_file_location(f"_nanochat_jax_pipeline_{Path(paths[-1]).stem}", paths[-1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_pipeline_config"):
        raise ConfigError(f"config file {paths[-1]} defines no get_pipeline_config(): it is a single-stage config (try configs/tiny.py)")
    cfg = module.get_pipeline_config()
    known = field_names(cfg)
    overrides = [_expand(a, known) for a in argv if a.startswith("--config.")]
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_dict("config", cfg, flag_values=values, lock_config=True, sys_argv=["pipeline", *overrides])
    try:
        values(["pipeline", *overrides])
    except (flags.Error, ValueError, TypeError) as e:
        raise ConfigError(str(e).replace("\n", " ")) from None
    return holder.value


def _expand(arg: str, known: list[str]) -> str:
    """``--config.sft.device_batch_size=8`` means the one field of that name in the sft stage (``sft.loop.…``)."""
    key, _, value = arg[len("--config."):].partition("=")
    if key in known:
        return arg
    stage, leaf = key.split(".", 1)[0], key.rsplit(".", 1)[-1]
    close = [k for k in known if k.endswith("." + leaf)]
    in_stage = [k for k in close if k.startswith(stage + ".") and k.count(".") == 2]
    if key.count(".") == 1 and len(in_stage) == 1:
        return f"--config.{in_stage[0]}={value}"
    close = sorted(close, key=lambda k: not k.startswith(stage + "."))
    close += [k for k in difflib.get_close_matches(key, known, n=5, cutoff=0.6) if k not in close]
    hint = f" Did you mean: {', '.join(close[:5])}?" if close else ""
    raise ConfigError(f"unknown pipeline config field '{key}' (fields are <stage>.<section>.<field>).{hint}")


def model_tags(cfg) -> dict[str, str]:
    """The checkpoint tag of every training stage (each continues its source's tag unless loop.model_tag says otherwise)."""
    tags = {"base": cfg.base.loop.model_tag or f"d{cfg.base.model.depth}"}
    for name in ("mid", "sft", "rl"):
        if name in cfg:
            tags[name] = cfg[name].loop.model_tag or cfg[name].source.model_tag
    return tags


# --------------------------------------------------------------------------- stages


@dataclasses.dataclass
class StageSpec:
    name: str
    done: Callable[[ml_collections.ConfigDict], str | None]  # why it can be skipped, or None
    run: Callable[[ml_collections.ConfigDict], None]  # runs in the stage's own process
    needs: str = ""  # module that must exist for the stage to be part of the run


def marker_path(name: str) -> Path:
    return get_base_dir() / "pipeline" / f"{name}.json"


def checkpoint_steps(stage: str, tag: str) -> list[int]:
    """Finished checkpoint steps (Orbax renames a step's directory into place only once it is complete)."""
    directory = get_base_dir() / STAGE_DIRS[stage] / tag
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def _shards(cfg) -> list[Path]:
    from nanochat_jax.dataset import resolve_data_dir, shard_name

    directory = resolve_data_dir(cfg.base.data.data_dir)
    return [directory / shard_name(i) for i in range(cfg.pipeline.num_shards)]


def _download_done(cfg) -> str | None:
    shards = _shards(cfg)
    return f"all {len(shards)} shards present" if all(p.exists() for p in shards) else None


def _download(cfg) -> None:
    from nanochat_jax.dataset import download_shards

    download_shards(range(cfg.pipeline.num_shards), cfg.base.data.data_dir or None, workers=cfg.pipeline.download_workers,
                    log=lambda line: print(line, flush=True))  # fmt: skip


def _tokenizer_done(cfg) -> str | None:
    from nanochat_jax.tokenizer import META_FILE, tokenizer_dir

    path = tokenizer_dir(cfg.base.data.tokenizer_dir) / META_FILE
    return f"tokenizer exists ({path})" if path.exists() else None


def _tokenizer(cfg) -> None:
    from train.tokenizer import train_from_config

    _, stats = train_from_config(cfg.base)
    print(f"tokenizer: vocab {stats['vocab_size']:,} in {stats['train_time_s']:.1f}s, {stats['bytes_per_token']:.3f} bytes/token on val")
    d = cfg.base.data
    write_section("Tokenizer training", [
        {"data_dir": d.data_dir or "base_data", "max_chars": d.tokenizer_max_chars, "doc_cap": d.tokenizer_doc_cap,
         "vocab_size": stats["vocab_size"]},
        {k: stats[k] for k in ("train_time_s", "train_chars", "train_docs", "train_files", "out_dir")},
    ])  # fmt: skip
    write_section("Tokenizer evaluation", [{k: stats[k] for k in ("val_file", "val_bytes", "val_tokens", "bytes_per_token")}])


def _training_done(name: str):
    def done(cfg) -> str | None:
        if not marker_path(name).exists():
            return None
        steps = checkpoint_steps(name, model_tags(cfg)[name])
        return f"final checkpoint step {steps[-1]} exists" if steps else None

    return done


def _train(name: str):
    def run(cfg) -> None:
        stage_cfg = cfg[name]
        steps = checkpoint_steps(name, model_tags(cfg)[name])
        if steps and not stage_cfg.loop.resume and stage_cfg.loop.resume_step < 0:
            print(f"{name}: resuming from checkpoint step {steps[-1]}", flush=True)
            stage_cfg.loop.resume = True
        started = time.time()
        summary = importlib.import_module(STAGE_MODULES[name]).run(stage_cfg)
        title = report.STAGE_TITLES[name]
        own = report_dir() / f"{section_slug(title)}.md"
        if own.exists() and own.stat().st_mtime >= started:
            return  # the stage wrote its own section (RL does)
        settings = {k: lookup(stage_cfg, k) for k in field_names(stage_cfg)}
        write_section(title, [settings, {k: v for k, v in summary.items() if v is not None}])

    return run


def _base_eval_done(cfg) -> str | None:
    kinds = [k for k in cfg.base_eval.evals.split(",") if k in ("core", "bpb")]
    tag = model_tags(cfg)["base"]
    return f"results {', '.join(kinds)} exist" if kinds and all(load_results("base", tag, k) for k in kinds) else None


def _base_eval(cfg) -> None:
    from train.base_eval import evaluate

    e = cfg.base_eval
    evaluate(model_tags(cfg)["base"], source="base", evals=tuple(e.evals.split(",")), max_per_task=e.max_per_task,
             bundle_dir=e.bundle_dir or None, split_tokens=e.split_tokens, device_batch_size=e.device_batch_size)  # fmt: skip


def _chat_eval_done(source: str):
    def done(cfg) -> str | None:
        return "chat results exist" if load_results(source, model_tags(cfg)[source], "chat") else None

    return done


def _chat_eval(source: str):
    def run(cfg) -> None:
        from train.chat_eval import evaluate

        e = cfg[f"{source}_eval"]
        evaluate(source, model_tags(cfg)[source], tasks=e.tasks, max_problems=e.max_problems if e.max_problems > 0 else None,
                 max_new_tokens=e.max_new_tokens, num_samples=e.num_samples, temperature=e.temperature, top_k=e.top_k,
                 batch_size=e.batch_size, task_dir=e.task_dir)  # fmt: skip

    return run


STAGES = (
    StageSpec("download", _download_done, _download),
    StageSpec("tokenizer", _tokenizer_done, _tokenizer),
    StageSpec("base", _training_done("base"), _train("base")),
    StageSpec("base_eval", _base_eval_done, _base_eval, needs="train.base_eval"),
    StageSpec("mid", _training_done("mid"), _train("mid")),
    StageSpec("mid_eval", _chat_eval_done("mid"), _chat_eval("mid"), needs="train.chat_eval"),
    StageSpec("sft", _training_done("sft"), _train("sft")),
    StageSpec("sft_eval", _chat_eval_done("sft"), _chat_eval("sft"), needs="train.chat_eval"),
    StageSpec("rl", _training_done("rl"), _train("rl"), needs="train.rl"),
    StageSpec("rl_eval", _chat_eval_done("rl"), _chat_eval("rl"), needs="train.chat_eval"),
)


def plan(cfg) -> tuple[list[StageSpec], list[str]]:
    """The stages this config runs, and a line for each one left out (and why)."""
    stages, left_out = [], []
    for spec in STAGES:
        if spec.name == "download" and cfg.pipeline.num_shards <= 0:
            left_out.append("download: not needed (the config's data is local)")
        elif spec.name.startswith("rl") and "rl" not in cfg:
            left_out.append(f"{spec.name}: not in this config")
        elif spec.needs and importlib.util.find_spec(spec.needs) is None:
            left_out.append(f"{spec.name}: not available ({spec.needs} is not part of this checkout)")
        else:
            stages.append(spec)
    return stages, left_out


# --------------------------------------------------------------------------- the parent


def fmt(seconds: float) -> str:
    m, s = divmod(int(max(seconds, 0)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def run_child(name: str, argv: list[str], prefix: Callable[[], str]) -> int:
    """Run one stage in its own process, forwarding its output line by line with the progress prefix."""
    log_path = get_base_dir() / "pipeline" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-u", "-m", "train.pipeline", f"--run_stage={name}", *argv]
    with open(log_path, "a") as log, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        try:
            for line in proc.stdout:
                log.write(line)
                print(f"{prefix()} {line}", end="", flush=True)
            return proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reaches the stage too: let it save its checkpoint
            proc.wait()
            raise


def run_pipeline(argv: list[str], start_from: str | None) -> None:
    cfg = load_pipeline_config(argv)
    stages, left_out = plan(cfg)
    names = [s.name for s in stages]
    if start_from is not None and start_from not in names + ["report"]:
        raise PipelineError(f"--from={start_from}: not a stage of this run; stages: {', '.join(names + ['report'])}")
    forced = set(names[names.index(start_from):]) if start_from in names else set()
    if not (report_dir() / "header.md").exists() or start_from == names[0]:
        report.reset()
    for line in left_out:
        print(f"[pipeline] {line}")
    status = {s.name: None if s.name in forced else s.done(cfg) for s in stages}
    estimates = cfg.pipeline.estimate_s
    t0 = time.time()
    for i, spec in enumerate(stages, 1):
        if status[spec.name]:
            print(f"[pipeline] {i}/{len(stages)} {spec.name}: skipped ({status[spec.name]})", flush=True)
            continue
        if spec.name in forced:
            _clear(spec.name, cfg)
        later = sum(estimates.get(s.name, 0) for s in stages[i:] if not status[s.name])
        started = time.time()

        def prefix(name=spec.name, i=i, est=estimates.get(spec.name, 0), later=later, started=started) -> str:
            now = time.time()
            return f"[{i}/{len(stages)} {name} | {fmt(now - t0)} elapsed | ~{fmt(max(est - (now - started), 0) + later)} left]"

        print(f"{prefix()} starting", flush=True)
        try:
            code = run_child(spec.name, argv, prefix)
        except KeyboardInterrupt:
            print(f"\n[pipeline] stopped during {spec.name}; run the same command again to continue from there", flush=True)
            raise SystemExit(130) from None
        if code != 0:
            raise PipelineError(f"stage {spec.name} failed (exit {code}); its output is in {get_base_dir() / 'pipeline' / (spec.name + '.log')}. "
                                f"Fix it and rerun: finished stages are skipped")  # fmt: skip
        seconds = time.time() - started
        with atomic_write(marker_path(spec.name), "w") as f:
            json.dump({"stage": spec.name, "seconds": seconds, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
        print(f"[pipeline] {i}/{len(stages)} {spec.name}: done in {fmt(seconds)}", flush=True)
    _report(cfg, stages)
    print(f"[pipeline] finished in {fmt(time.time() - t0)}: {report_dir() / 'report.md'} (copy: {Path.cwd() / 'report.md'})")


def _clear(name: str, cfg) -> None:
    """``--from``: a training stage rerun from scratch loses its old checkpoints (else it would resume from them)."""
    marker_path(name).unlink(missing_ok=True)
    if name in STAGE_MODULES:
        directory = get_base_dir() / STAGE_DIRS[name] / model_tags(cfg)[name]
        if directory.exists():
            print(f"[pipeline] --from: removing {directory} to retrain {name} from the start", flush=True)
            shutil.rmtree(directory)


def _report(cfg, stages: list[StageSpec]) -> None:
    """The per-stage wall times as a section, then the report card of this run's model tags."""
    rows = ["| Stage | Wall time |", "|---|---|"]
    total = 0.0
    for spec in stages:
        if marker_path(spec.name).exists():
            seconds = json.loads(marker_path(spec.name).read_text())["seconds"]
            total += seconds
            rows.append(f"| {spec.name} | {fmt(seconds)} ({seconds:.0f}s) |")
    rows.append(f"| total | {fmt(total)} ({total:.0f}s) |")
    write_section("Pipeline stages", ["\n".join(rows)])
    tags = model_tags(cfg)
    report.generate({s: tags.get(s) for s in report.SOURCES})


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    stage = [a.split("=", 1)[1] for a in argv if a.startswith("--run_stage=")]
    start_from = [a.split("=", 1)[1] for a in argv if a.startswith("--from=")]
    argv = [a for a in argv if not a.startswith(("--run_stage=", "--from="))]
    for arg in argv:
        if not arg.startswith("--config"):
            raise ConfigError(f"unexpected argument {arg!r}; use --config=FILE, --config.<stage>.<field>=value, --from=<stage>")
    if stage:
        spec = {s.name: s for s in STAGES}[stage[-1]]
        spec.run(load_pipeline_config(argv))
    else:
        run_pipeline(argv, start_from[-1] if start_from else None)


if __name__ == "__main__":
    cli.main(main)
