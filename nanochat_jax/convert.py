"""Weights interop with PyTorch nanochat (classic, commit 8c89661).

Why: so a model trained here can be evaluated, chatted with or fine-tuned by
nanochat itself, a nanochat checkpoint can be continued or served here, and
the JAX model can be checked for parity against nanochat's numbers.

nanochat stores one PyTorch ``state_dict`` per step (``model_XXXXXX.pt``) with
``(out, in)`` Linear weights, one tensor per layer, next to ``meta_XXXXXX.json``
whose ``model_config`` holds the six ``GPTConfig`` fields. This project keeps
``(in, out)`` kernels stacked on a leading layer axis (see ``nanochat_jax.gpt``).
The mapping is a transpose plus (un)stacking; the embedding keeps its layout.

The mapping itself works on numpy arrays (``state_dict_to_params`` /
``params_to_state_dict``) so it is testable without torch; torch is only
imported, lazily, to read and write ``.pt`` files.

CLI::

    python -m nanochat_jax.convert to-torch --src <project ckpt dir> [--step N] --out <nanochat dir>
    python -m nanochat_jax.convert to-jax   --src <nanochat dir>     [--step N] --out <project ckpt dir>
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from nanochat_jax.common import atomic_write, json_safe
from nanochat_jax.errors import CheckpointFormatError, MissingDependencyError, UsageError

TORCH_INSTALL_HINT = "pip install 'nanochat-jax[torch]'"

# Project block parameter -> nanochat's per-layer key suffix.
BLOCK_KEY = {
    "attn_c_q": "attn.c_q.weight",
    "attn_c_k": "attn.c_k.weight",
    "attn_c_v": "attn.c_v.weight",
    "attn_c_proj": "attn.c_proj.weight",
    "mlp_c_fc": "mlp.c_fc.weight",
    "mlp_c_proj": "mlp.c_proj.weight",
}
WTE_KEY = "transformer.wte.weight"
LM_HEAD_KEY = "lm_head.weight"
COMPILE_PREFIX = "_orig_mod."
# nanochat's classic ``GPTConfig`` fields, i.e. what ``meta['model_config']`` holds.
MODEL_CONFIG_FIELDS = ("sequence_len", "vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd")

# Names that only nanochat after the classic era (HEAD architecture) writes.
_POST_CLASSIC = re.compile(
    r"(value_embeds|ve_gate|resid_lambdas|x0_lambdas|smear_gate|smear_lambda|backout_lambda)"
)
_MODEL_FILE = re.compile(r"^model_(\d+)\.pt$")


def _import_torch():
    """torch is optional: only conversion and parity tests need it."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - exercised only without torch
        raise MissingDependencyError(
            f"nanochat_jax.convert needs PyTorch to read/write nanochat .pt checkpoints: {TORCH_INSTALL_HINT}"
        ) from e
    return torch


# --------------------------------------------------------------------------- mapping


def block_key(layer: int, name: str) -> str:
    return f"transformer.h.{layer}.{BLOCK_KEY[name]}"


def expected_torch_shapes(config) -> dict[str, tuple[int, ...]]:
    """Exactly the keys and shapes of nanochat's ``GPT(config).state_dict()``."""
    Vp, C = config.padded_vocab_size, config.n_embd
    shapes: dict[str, tuple[int, ...]] = {WTE_KEY: (Vp, C)}
    for layer in range(config.n_layer):
        for name, (_, fan_in, fan_out) in config.block_shapes().items():
            shapes[block_key(layer, name)] = (fan_out, fan_in)  # torch Linear is (out, in)
    shapes[LM_HEAD_KEY] = (Vp, C)
    return shapes


def strip_compile_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Drop ``_orig_mod.`` that ``torch.compile``'d modules add to every key."""
    return {k.removeprefix(COMPILE_PREFIX): v for k, v in state_dict.items()}


def validate_state_dict(shapes: Mapping[str, tuple[int, ...]], config) -> None:
    """Strict check of a ``{key: shape}`` map against ``config``; one error naming every problem.

    nanochat itself loads with ``strict=True``, so anything short of an exact
    match would mean a different model; better to say which keys than to fail
    on the first one (or, worse, silently ignore extras).
    """
    expected = expected_torch_shapes(config)
    missing = [k for k in expected if k not in shapes]
    extra = sorted(k for k in shapes if k not in expected)
    misshaped = [
        (k, expected[k], tuple(shapes[k])) for k in expected if k in shapes and tuple(shapes[k]) != expected[k]
    ]
    if not (missing or extra or misshaped):
        return
    cfg = config.model_config_dict()
    lines = [f"state dict does not match nanochat's classic GPT for model_config {cfg}:"]
    if missing:
        lines.append(f"  missing {len(missing)} tensor(s):")
        lines += [f"    {k}: expected shape {expected[k]}" for k in missing]
    if extra:
        lines.append(f"  unexpected {len(extra)} tensor(s):")
        lines += [f"    {k}: shape {tuple(shapes[k])}" for k in extra]
        if any(_POST_CLASSIC.search(k) for k in extra):
            lines.append(
                "  this looks like a post-classic nanochat checkpoint (value embeddings / per-layer scalars / "
                "smear / backout from nanochat after commit 8c89661); only the classic architecture is supported"
            )
    if misshaped:
        lines.append(f"  {len(misshaped)} tensor(s) with the wrong shape:")
        lines += [f"    {k}: expected {e}, got {a}" for k, e, a in misshaped]
    raise ValueError("\n".join(lines))


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], config) -> dict[str, Any]:
    """nanochat state dict (numpy, fp32) -> the project's nested param dict (numpy).

    Validates strictly first; the result plugs into
    ``nnx.replace_by_pure_dict`` for a ``GPT(config)``.
    """
    state_dict = strip_compile_prefix(state_dict)
    validate_state_dict({k: np.shape(v) for k, v in state_dict.items()}, config)
    blocks = {
        name: np.stack([np.asarray(state_dict[block_key(i, name)]).T for i in range(config.n_layer)])
        for name in BLOCK_KEY
    }
    return {
        "wte": np.asarray(state_dict[WTE_KEY]),
        "h": blocks,
        "lm_head": np.asarray(state_dict[LM_HEAD_KEY]).T,
    }


def params_to_state_dict(params: Mapping[str, Any], config) -> dict[str, np.ndarray]:
    """The project's nested param dict -> nanochat state dict of fp32 numpy arrays.

    Every array is a fresh C-contiguous copy so each torch tensor made from it
    owns its own storage (``torch.save`` would otherwise write the whole
    stacked array once and store per-layer views into it).
    """

    def host(x) -> np.ndarray:
        return np.asarray(x, dtype=np.float32)

    out = {WTE_KEY: np.array(host(params["wte"]), copy=True, order="C")}
    stacked = {name: host(params["h"][name]) for name in BLOCK_KEY}
    for layer in range(config.n_layer):
        for name in BLOCK_KEY:
            out[block_key(layer, name)] = np.ascontiguousarray(stacked[name][layer].T).copy()
    out[LM_HEAD_KEY] = np.ascontiguousarray(host(params["lm_head"]).T).copy()
    validate_state_dict({k: v.shape for k, v in out.items()}, config)
    return out


def build_model(config, params: Mapping[str, Any]):
    """A ``GPT`` holding ``params`` without first materialising a random init."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from nanochat_jax.gpt import GPT

    abstract = nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda a: jnp.asarray(a, dtype=jnp.float32), params))
    return nnx.merge(graphdef, state)


def model_params(model) -> dict[str, Any]:
    """Nested ``{name: array}`` dict of a GPT's parameters."""
    from flax import nnx

    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


# --------------------------------------------------------------------------- files


def available_steps(checkpoint_dir: str | Path) -> list[int]:
    """Steps with a ``model_XXXXXX.pt`` in the directory, ascending."""
    d = Path(checkpoint_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"nanochat checkpoint directory {str(d)!r} does not exist")
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _MODEL_FILE.match(p.name)))


def resolve_step(checkpoint_dir: str | Path, step: int | None = None) -> int:
    """``step`` if its files exist, else the latest step when ``step`` is None."""
    d = Path(checkpoint_dir)
    steps = available_steps(d)
    if not steps:
        raise FileNotFoundError(
            f"no nanochat model files (model_XXXXXX.pt, e.g. model_000000.pt) in {str(d)!r}"
        )
    if step is None:
        return steps[-1]
    if int(step) not in steps:
        raise FileNotFoundError(
            f"no model_{int(step):06d}.pt in {str(d)!r}; available steps: {steps}"
        )
    return int(step)


def load_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a nanochat ``.pt`` into fp32 numpy arrays (bf16/fp16 upcast; prefix stripped)."""
    torch = _import_torch()
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(sd, Mapping):
        raise CheckpointFormatError(f"{str(path)!r} does not hold a state dict (got {type(sd).__name__})")
    out = {}
    for k, v in strip_compile_prefix(sd).items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointFormatError(f"{str(path)!r}: entry {k!r} is a {type(v).__name__}, not a tensor")
        out[k] = v.detach().to(torch.float32).numpy()
    return out


def load_torch_checkpoint(checkpoint_dir: str | Path, step: int | None = None, **config_overrides):
    """Load a classic nanochat checkpoint directory into a JAX ``GPT``.

    Returns ``(model, meta)``. ``config_overrides`` are extra ``GPTConfig``
    fields, typically execution switches (``compute_dtype``, ``scan_layers``,
    ``remat``...), applied on top of ``meta['model_config']``.
    """
    from nanochat_jax.gpt import GPTConfig

    d = Path(checkpoint_dir)
    step = resolve_step(d, step)
    meta_path = d / f"meta_{step:06d}.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{str(meta_path)!r} is missing (nanochat writes it beside model_{step:06d}.pt)")
    meta = json.loads(meta_path.read_text())
    model_cfg = meta.get("model_config")
    if not isinstance(model_cfg, Mapping):
        raise CheckpointFormatError(f"{str(meta_path)!r} has no 'model_config' dict")
    unknown = sorted(set(model_cfg) - set(MODEL_CONFIG_FIELDS))
    if unknown:
        raise ValueError(
            f"{str(meta_path)!r}: model_config has fields {unknown} that classic nanochat does not have; "
            "this looks like a post-classic nanochat checkpoint, which is not supported"
        )
    absent = [k for k in MODEL_CONFIG_FIELDS if k not in model_cfg]
    if absent:
        raise ValueError(f"{str(meta_path)!r}: model_config lacks {absent} (expected all of {MODEL_CONFIG_FIELDS})")
    config = GPTConfig(**{**model_cfg, **config_overrides})
    sd = load_torch_state_dict(d / f"model_{step:06d}.pt")
    params = state_dict_to_params(sd, config)
    return build_model(config, params), meta


def save_torch_checkpoint(model, meta: Mapping[str, Any] | None, checkpoint_dir: str | Path, step: int):
    """Write ``model_{step:06d}.pt`` + ``meta_{step:06d}.json`` that nanochat's ``load_model`` accepts.

    The state dict has exactly nanochat's keys (no rotary buffers), fp32
    ``(out, in)`` tensors except ``wte``, stored in bf16 as nanochat's own
    checkpoints hold it (an fp32 ``wte`` would run nanochat with an fp32
    residual stream); ``meta['model_config']`` is the model's six config
    fields (overriding any stale value in ``meta``). Both files are written
    atomically. Returns ``(model_path, meta_path)``.
    """
    torch = _import_torch()
    config = model.config
    sd_np = params_to_state_dict(model_params(model), config)
    state_dict = {k: torch.from_numpy(v) for k, v in sd_np.items()}
    state_dict[WTE_KEY] = state_dict[WTE_KEY].to(torch.bfloat16)  # round to nearest even, as nanochat's cast
    d = Path(checkpoint_dir)
    model_path = d / f"model_{int(step):06d}.pt"
    meta_path = d / f"meta_{int(step):06d}.json"
    full_meta = dict(meta or {})
    full_meta["model_config"] = config.model_config_dict()
    with atomic_write(model_path, "wb") as f:
        torch.save(state_dict, f)
    with atomic_write(meta_path, "w") as f:
        json.dump(json_safe(full_meta), f, indent=2)
    return model_path, meta_path


# --------------------------------------------------------------------------- CLI


def _to_torch(args) -> None:
    from nanochat_jax.checkpoint import load_model_checkpoint

    model, meta = load_model_checkpoint(args.src, step=args.step)
    meta = dict(meta or {})
    step = args.step if args.step is not None else meta.get("step")
    if step is None:
        raise UsageError("could not tell the checkpoint's step from its meta; pass --step")
    model_path, _ = save_torch_checkpoint(model, meta, args.out, int(step))
    print(f"wrote {model_path} (+ meta) from {args.src}")


def _to_jax(args) -> None:
    from nanochat_jax.checkpoint import save_model_checkpoint

    step = resolve_step(args.src, args.step)
    model, meta = load_torch_checkpoint(args.src, step)
    save_model_checkpoint(model, meta, args.out, step)
    print(f"wrote step {step} to {args.out} from {args.src}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nanochat_jax.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("to-torch", help="project checkpoint -> nanochat model_XXXXXX.pt + meta_XXXXXX.json")
    p.add_argument("--src", required=True, help="project checkpoint directory")
    p.add_argument("--step", type=int, default=None, help="step to convert (default: latest)")
    p.add_argument("--out", required=True, help="nanochat checkpoint directory to write")
    p.set_defaults(fn=_to_torch)
    p = sub.add_parser("to-jax", help="nanochat checkpoint -> project checkpoint")
    p.add_argument("--src", required=True, help="nanochat checkpoint directory (model_XXXXXX.pt + meta)")
    p.add_argument("--step", type=int, default=None, help="step to convert (default: latest)")
    p.add_argument("--out", required=True, help="project checkpoint directory to write")
    p.set_defaults(fn=_to_jax)
    args = parser.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    from nanochat_jax import cli

    cli.main(main)
