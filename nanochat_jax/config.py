"""Python config files with command-line overrides, ml_collections style.

    python -m train.pretrain --config=configs/d20.py --config.depth=12 --config.run_name=test

A config file defines ``get_config() -> ml_collections.ConfigDict``. Every
``--config.<field>=<value>`` override must name an existing field (nested
fields with dots); the value is parsed to the field's current type. An
unknown field is an error that lists the closest existing names, so a typo
never silently trains with the default.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import sys
from pathlib import Path

import ml_collections


class ConfigError(ValueError):
    """A config file or override that cannot be used as given."""


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (configs live in configs/, e.g. configs/tiny.py)")
    spec = importlib.util.spec_from_file_location(f"_nanochat_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config()")
    cfg = module.get_config()
    if not isinstance(cfg, ml_collections.ConfigDict):
        cfg = ml_collections.ConfigDict(cfg)
    return cfg


def _all_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        keys.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            keys.extend(_all_keys(v, prefix + k + "."))
    return keys


def _parse_value(raw: str, current, key: str):
    """Parse ``raw`` to the type of the field's current value."""
    try:
        if isinstance(current, bool):
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(current, int):
            value = ast.literal_eval(raw)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(raw)
            return value
        if isinstance(current, float):
            return float(ast.literal_eval(raw))
        if isinstance(current, str):
            return raw
        if isinstance(current, (tuple, list)):
            return type(current)(ast.literal_eval(raw))
        try:  # None or anything else: a Python literal, else the raw string
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
    except (ValueError, SyntaxError):
        raise ConfigError(
            f"--config.{key}={raw!r}: expected a {type(current).__name__} (current value {current!r})"
        ) from None


def apply_override(cfg: ml_collections.ConfigDict, key: str, raw: str) -> None:
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            known = _all_keys(cfg)
            close = difflib.get_close_matches(key, known, n=5, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config field '{key}'.{hint} Known fields: {', '.join(sorted(known))}")
        if i < len(parts) - 1:
            node = node[part]
    leaf = parts[-1]
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"--config.{key} names a group; override one of its fields instead")
    node[leaf] = _parse_value(raw, current, key)


def parse_args(argv: list[str] | None = None, default_config: str | None = None) -> ml_collections.ConfigDict:
    """``--config=path`` plus ``--config.field=value`` overrides, in order."""
    argv = sys.argv[1:] if argv is None else argv
    path = default_config
    overrides: list[tuple[str, str]] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            raise SystemExit(_usage(path))
        if not arg.startswith("--config"):
            raise ConfigError(f"unexpected argument {arg!r}; use --config=FILE and --config.field=value")
        if "=" not in arg:
            if not args:
                raise ConfigError(f"{arg} needs a value")
            arg = f"{arg}={args.pop(0)}"
        name, raw = arg[2:].split("=", 1)
        if name == "config":
            path = raw
        elif name.startswith("config."):
            overrides.append((name[len("config."):], raw))
        else:
            raise ConfigError(f"unexpected argument {arg!r}")
    if path is None:
        raise ConfigError("no config given: pass --config=configs/<name>.py")
    cfg = load_config_file(path)
    for key, raw in overrides:
        apply_override(cfg, key, raw)
    cfg.lock()
    return cfg


def _usage(path: str | None) -> str:
    text = "usage: --config=configs/<name>.py [--config.<field>=<value> ...]\n"
    if path:
        cfg = load_config_file(path)
        text += f"\nfields of {path}:\n" + "\n".join(f"  {k} = {cfg[k]!r}" for k in cfg.keys())
    return text
