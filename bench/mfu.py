"""JAX vs PyTorch training-step throughput and MFU on one device, in one command.

    python -m bench.mfu --depth 20 --seq_len 2048 --device_batch_size 32            # one H100: d20 as nanochat trains it
    python -m bench.mfu --depth 20 --remat dots --scan_layers --json runs/mfu.json  # a JAX variant, results saved
    python -m bench.mfu --depth 20 --nanochat ~/nanochat                            # against a nanochat checkout
    python -m bench.mfu --depth 1 --vocab_size 256 --seq_len 64 --device_batch_size 2 --steps 2   # CPU smoke
    python -m bench.mfu --depth 4 --vocab_size 4096 --seq_len 256 --device_batch_size 8 --rounds 5   # CPU, tiny config

Why one command: the question "is the JAX port as fast as nanochat?" is only
answered by both frameworks training the same model, with the same optimizer,
on the same device, the same tokens and the same clock. Each framework runs in
its own subprocess (this command plus ``--worker jax|torch``, printing one JSON line), so
neither framework's GPU memory pool (XLA preallocates, PyTorch caches) can
starve or flatter the other, and each gets its own tuned environment.

- JAX side: the project's real train step (``bench.step.benchmark``, i.e.
  ``train_step.make_train_step`` as ``train.pretrain`` compiles it: Muon +
  AdamW, grad clip 1.0, donation, sharding).
- PyTorch side: ``bench.torch_nanochat`` (nanochat's model and optimizers,
  bf16 autocast, torch.compile, SDPA flash, fused AdamW), or with
  ``--nanochat PATH`` the user's own nanochat checkout driven the way
  classic ``base_train`` drives it.
- Both start from the same weights (the JAX init, loaded into the PyTorch
  model) and use the same synthetic tokens (numpy seed 0), and report the loss
  after their last step as a check that the same thing was trained.
  ``--data_dir`` feeds the JAX side from the project's real data loader
  instead (every step a new batch, waits for data included), to show the
  loader keeps up; its loss is then on real text and not comparable.
- ``--rounds N`` runs the workers N times, alternating (jax, torch, jax, …), and
  reports every round's ratio and their median: a shared CPU drifts by ±10%
  between runs, as much as the difference being measured.

MFU is nanochat's: ``flops_per_token * tokens/s / peak`` with
``GPTConfig.flops_per_token()`` (6(N - N_wte) + 12 L H D T) and the bf16 peak
from ``nanochat_jax.hardware`` (989e12 for H100/H200); n/a on CPU.

GPU defaults (documented; ``--no_xla_flags`` drops the JAX ones, an explicit
value already in the environment always wins):
  JAX:     XLA_PYTHON_CLIENT_MEM_FRACTION=0.92, JAX_OPTIMIZATION_LEVEL=O1
           (latency-hiding scheduler, while-loop double buffering),
           XLA_FLAGS += --xla_gpu_enable_triton_gemm=false
                        --xla_gpu_enable_latency_hiding_scheduler=true
  PyTorch: expandable_segments:True allocator, TF32 matmuls (nanochat's settings).
Both workers see only the chosen GPU (``--gpu``, via CUDA_VISIBLE_DEVICES), and
on CPU JAX is held to one host device like torch.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench.common import add_model_flags, add_step_flags

REPO_ROOT = Path(__file__).resolve().parents[1]

FRAMEWORKS = ("jax", "torch")
JAX_GPU_ENV = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.92", "JAX_OPTIMIZATION_LEVEL": "O1"}
JAX_GPU_XLA_FLAGS = ("--xla_gpu_enable_triton_gemm=false", "--xla_gpu_enable_latency_hiding_scheduler=true")
TORCH_ALLOC = "expandable_segments:True"
FORCED_HOST_DEVICES = re.compile(r"--xla_force_host_platform_device_count=\S+")
RESULT_KEY = "framework"


# --------------------------------------------------------------------------- CLI


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    add_step_flags(p, steps=20, warmup=3)  # the step, data and accumulation flags mean the same for both frameworks
    p.add_argument("--frameworks", default="jax,torch", help="comma list from: jax, torch")
    p.add_argument("--nanochat", default=None, metavar="PATH",
                   help="time this nanochat checkout (dir holding nanochat/gpt.py) instead of bench.torch_nanochat")
    p.add_argument("--no_xla_flags", action="store_true", help="drop the JAX GPU env/flag defaults (see above)")
    # PyTorch switches.
    p.add_argument("--torch_compile", default="auto", choices=["auto", "on", "off"], help="auto = on for CUDA, off on CPU")
    p.add_argument("--torch_threads", type=int, default=0,
                   help="torch.set_num_threads for the torch worker (0 = torch's default); 1 helps on a crowded CPU")
    # Placement and output.
    p.add_argument("--platform", default="auto", choices=["auto", "gpu", "cpu"])
    p.add_argument("--gpu", type=int, default=0, help="index among the visible GPUs; both workers get only this one")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker")
    p.add_argument("--rounds", type=int, default=1, help="alternate the frameworks this many times; report the median ratio")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the results as JSON")
    p.add_argument("--worker", choices=FRAMEWORKS, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what the workers are started with
    args.framework_list = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    bad = [f for f in args.framework_list if f not in FRAMEWORKS]
    if bad or not args.framework_list:
        p.error(f"--frameworks: unknown {bad or 'empty list'}; choose from {', '.join(FRAMEWORKS)}")
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        p.error("--steps and --rounds must be >= 1 and --warmup >= 0")
    return args


# --------------------------------------------------------------------------- environment


def detect_platform(requested: str = "auto") -> str:
    """'gpu' when an NVIDIA GPU is visible and nothing pins JAX to CPU, else 'cpu'.

    Decided without importing jax or torch: initialising either here would
    grab GPU memory in the parent process.
    """
    if requested != "auto":
        return requested
    plats = os.environ.get("JAX_PLATFORMS", "").lower()
    if plats and not re.search(r"cuda|gpu", plats):
        return "cpu"
    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return "cpu"
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return "gpu"
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            return "cpu"
        return "gpu" if "GPU" in out else "cpu"
    return "cpu"


def chosen_gpu(index: int, environ=None) -> str:
    """The physical id for CUDA_VISIBLE_DEVICES: ``index`` among the already visible GPUs."""
    environ = os.environ if environ is None else environ
    visible = [v for v in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible:
        return str(index)
    if index >= len(visible):
        raise SystemExit(f"--gpu {index}: only {len(visible)} GPU(s) visible (CUDA_VISIBLE_DEVICES={','.join(visible)})")
    return visible[index].strip()


def _torch_alloc_var() -> str:
    """Which variable this torch reads: PYTORCH_ALLOC_CONF from 2.10 (2.9.1 ignored it for CUDA), else the CUDA one."""
    try:
        major, minor = (int(x) for x in re.findall(r"\d+", importlib.metadata.version("torch"))[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return "PYTORCH_ALLOC_CONF"
    return "PYTORCH_ALLOC_CONF" if (major, minor) >= (2, 10) else "PYTORCH_CUDA_ALLOC_CONF"


def worker_env(framework: str, platform: str, *, gpu_index: int = 0, xla_flags: bool = True, nanochat=None,
               base=None) -> dict:
    """The environment one worker starts with (set before it imports its framework).

    PYTHONPATH gets this repository (``bench``, ``nanochat_jax``) and, for the torch
    worker, the ``--nanochat`` checkout, so each is imported as the package it is.
    """
    env = dict(os.environ if base is None else base)
    roots = [str(REPO_ROOT)] + ([str(Path(nanochat).expanduser().resolve())] if nanochat and framework == "torch" else [])
    env["PYTHONPATH"] = os.pathsep.join(roots + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    # One device per framework: a forced multi-device CPU host (the test suite sets one) would
    # split JAX's batch over fake devices while torch runs on one.
    flags = FORCED_HOST_DEVICES.sub("", env.get("XLA_FLAGS", "")).split()
    if platform == "cpu":
        if framework == "jax":
            env["JAX_PLATFORMS"] = "cpu"
    else:
        env["CUDA_VISIBLE_DEVICES"] = chosen_gpu(gpu_index, env)
        if framework == "jax" and xla_flags:
            for k, v in JAX_GPU_ENV.items():
                env.setdefault(k, v)
            present = {f.split("=")[0] for f in flags}
            flags += [f for f in JAX_GPU_XLA_FLAGS if f.split("=")[0] not in present]
        if framework == "torch":
            var = _torch_alloc_var()
            if "PYTORCH_ALLOC_CONF" not in env and "PYTORCH_CUDA_ALLOC_CONF" not in env:
                env[var] = TORCH_ALLOC
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    else:
        env.pop("XLA_FLAGS", None)
    return env


# --------------------------------------------------------------------------- workers (child processes)


def _jax_worker(args) -> dict:
    import jax

    if args.platform == "gpu" and jax.default_backend() != "gpu":
        raise RuntimeError(f"asked for a GPU but JAX's backend is {jax.default_backend()!r} (is jax[cuda13] installed?)")
    from bench import step

    result = step.benchmark(args)
    import flax
    import jaxlib
    import optax

    result.update(
        framework="jax",
        device=jax.devices()[0].device_kind,
        num_devices=jax.device_count(),
        versions=f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {flax.__version__}, optax {optax.__version__}",
        env={k: os.environ.get(k) for k in ("XLA_FLAGS", *JAX_GPU_ENV) if os.environ.get(k)},
    )
    result.pop("mfu", None)  # recomputed by the parent for every row alike
    return result


def _torch_worker(args) -> dict:
    import torch

    from bench import torch_nanochat as tn

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    if args.platform == "gpu" and not torch.cuda.is_available():
        raise RuntimeError(f"asked for a GPU but torch {torch.__version__} sees no CUDA device (CPU-only build?)")
    result = tn.benchmark(args, device="cuda" if args.platform == "gpu" else "cpu",
                          compile={"auto": None, "on": True, "off": False}[args.torch_compile])
    result["env"] = {k: os.environ[k] for k in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF") if k in os.environ}
    return result


def run_worker(args) -> int:
    """Child process: time one framework, print one JSON line (also on failure)."""
    try:
        result = _jax_worker(args) if args.worker == "jax" else _torch_worker(args)
        code = 0
    except Exception as e:  # report, don't crash silently: the parent shows the row as failed
        result = {"framework": args.worker, "error": f"{type(e).__name__}: {e}"}
        if args.nanochat and args.worker == "torch":
            result["framework"] = "nanochat"
        code = 1
    sys.stdout.flush()
    print(json.dumps(result, default=str), flush=True)
    return code


# --------------------------------------------------------------------------- parent


def worker_argv(args, framework: str, platform: str) -> list[str]:
    """This command again, as one framework's worker (same flags, same working directory)."""
    return [sys.executable, "-m", "bench.mfu", *args.argv, "--worker", framework, "--platform", platform]


def parse_worker_output(stdout: str) -> dict | None:
    """The last stdout line that is a JSON result (other lines are the worker's own prints)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and RESULT_KEY in obj:
                return obj
    return None


def launch(args, framework: str, platform: str) -> dict:
    label = "nanochat" if (framework == "torch" and args.nanochat) else framework
    env = worker_env(framework, platform, gpu_index=args.gpu, xla_flags=not args.no_xla_flags, nanochat=args.nanochat)
    print(f"[mfu] running the {label} worker ...", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(worker_argv(args, framework, platform), env=env, capture_output=True, text=True,
                              timeout=args.timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"framework": label, "error": f"timed out after {args.timeout:.0f} s"}
    result = parse_worker_output(proc.stdout)
    extra = [ln for ln in proc.stdout.splitlines() if ln.strip() and parse_worker_output(ln) is None]
    if extra or proc.stderr.strip():
        sys.stderr.write("".join(f"[{label}] {ln}\n" for ln in extra + proc.stderr.splitlines()))
    if result is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"framework": label, "error": f"worker exited {proc.returncode}: {tail}"}
    return result


def add_mfu(results: list[dict], args) -> dict:
    """Attach nanochat-style MFU to every row; returns the shared model facts."""
    from nanochat_jax.gpt import GPTConfig
    from nanochat_jax.hardware import peak_flops

    cfg = GPTConfig.from_depth(args.depth, vocab_size=args.vocab_size, sequence_len=args.seq_len)
    fpt = cfg.flops_per_token()
    for r in results:
        if "error" in r:
            continue
        peak = peak_flops(r.get("device", ""))
        r["peak_flops"] = peak
        r["mfu"] = None if peak is None else r["tokens_per_s"] * fpt / (peak * r.get("num_devices", 1))
        if r.get("params") != cfg.num_params():
            r["note"] = f"model has {r.get('params'):,} params, classic d{args.depth} has {cfg.num_params():,}; MFU uses the classic FLOPs"
    return {"flops_per_token": fpt, "params": cfg.num_params()}


def tokens_ratio(results: list[dict]) -> float | None:
    """JAX tokens/s over the PyTorch row's (torch or nanochat), when both succeeded."""
    by = {r["framework"]: r for r in results if "error" not in r}
    other = by.get("torch") or by.get("nanochat")
    if "jax" not in by or other is None:
        return None
    return by["jax"]["tokens_per_s"] / other["tokens_per_s"]


def round_ratios(results: list[dict]) -> list[float]:
    """``tokens_ratio`` of every round (rows grouped by their ``round``) in which both sides succeeded."""
    rounds: dict[int, list[dict]] = {}
    for r in results:
        rounds.setdefault(r.get("round", 1), []).append(r)
    return [x for x in (tokens_ratio(rows) for _, rows in sorted(rounds.items())) if x is not None]


def median_ratio(results: list[dict]) -> float | None:
    ratios = round_ratios(results)
    return statistics.median(ratios) if ratios else None


def format_table(results: list[dict], facts: dict, args, platform: str) -> str:
    def fmt(v, spec, unit=""):
        return "n/a" if v is None else f"{v:{spec}}{unit}"

    lines = [
        (
            f"d{args.depth}: {facts['params']:,} params, V={args.vocab_size}, T={args.seq_len}, "
            f"B={args.device_batch_size}x{args.grad_accum} -> {args.device_batch_size * args.grad_accum * args.seq_len:,} tokens/step; "
            f"{args.steps} timed steps after {args.warmup} warm-up; platform {platform}"
        ),
        f"FLOPs/token {facts['flops_per_token']:.6e} (nanochat: 6(N - N_wte) + 12 L H D T)",
        "",
        "| framework | device | step (median) | tokens/s | MFU | peak memory | compile | loss (last) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        name = r["framework"] if args.rounds == 1 else f"{r['framework']} (round {r['round']})"
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | | |")
            continue
        lines.append(
            f"| {name} | {r['device']} | {r['step_ms']:.1f} ms | {r['tokens_per_s']:,.0f} | "
            f"{fmt(None if r['mfu'] is None else 100 * r['mfu'], '.1f', '%')} | {fmt(r.get('peak_mem_gib'), '.2f', ' GiB')} | "
            f"{fmt(r.get('compile_s'), '.1f', ' s')} | {fmt(r.get('loss'), '.4f')} |"
        )
    ratio, ratios = median_ratio(results), round_ratios(results)
    rounds = f" (median of {len(ratios)} rounds: {', '.join(f'{x:.3f}x' for x in ratios)})" if args.rounds > 1 else ""
    lines.append("")
    lines.append(f"JAX / PyTorch tokens/s: {'n/a' if ratio is None else f'{ratio:.3f}x'}{rounds}")
    for r in results:
        if "error" not in r and r.get("round", 1) == 1:
            lines.append(f"  {r['framework']}: {r.get('config', '')}; {r.get('versions', '')}")
            if r.get("env"):
                lines.append(f"    env: {' '.join(f'{k}={v}' for k, v in r['env'].items())}")
            if r.get("note"):
                lines.append(f"    note: {r['note']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    if args.nanochat and not (Path(args.nanochat).expanduser() / "nanochat" / "gpt.py").is_file():
        print(f"error: --nanochat {args.nanochat}: no nanochat/gpt.py there; pass the root of a nanochat checkout",
              file=sys.stderr)
        return 2
    platform = detect_platform(args.platform)
    results = [{**launch(args, fw, platform), "round": i + 1} for i in range(args.rounds) for fw in args.framework_list]
    facts = add_mfu(results, args)
    print(format_table(results, facts, args, platform), flush=True)
    if args.json:
        out = {
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python -m bench.mfu", *args.argv]),
            "platform": platform,
            **facts,
            "jax_over_torch_tokens_per_s": median_ratio(results),
            "round_ratios": round_ratios(results),
            "results": results,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
