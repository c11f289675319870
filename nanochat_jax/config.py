"""Config files with typed command-line overrides, parsed by ``ml_collections.config_flags``.

    python -m train.pretrain --config=configs/d20.py --config.model.depth=12 --config.loop.num_iterations=100

A config file defines ``get_config() -> ConfigDict`` built from the shared
sections in ``configs/base.py``. The only additions here: errors become one
``ConfigError`` line, and an unknown field suggests the closest dotted names
across every section (``--config.depth`` -> ``model.depth``).
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from pathlib import Path

import ml_collections
from absl import flags
from ml_collections import config_flags

from nanochat_jax.errors import NanochatError


class ConfigError(NanochatError, ValueError):
    """A config file or override that cannot be used as given."""


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (configs live in configs/, e.g. configs/tiny.py)")
    spec = importlib.util.spec_from_file_location(f"_nanochat_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a broken config file is the user's to fix: name it
        raise ConfigError(f"config file {path} could not be loaded: {type(e).__name__}: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config()")
    return module.get_config()


def field_names(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every leaf as a dotted name, e.g. ``model.depth``."""
    names = []
    for key, value in cfg.items():
        if isinstance(value, ml_collections.ConfigDict):
            names.extend(field_names(value, f"{prefix}{key}."))
        else:
            names.append(prefix + key)
    return names


def lookup(cfg: ml_collections.ConfigDict, name: str):
    for part in name.split("."):
        cfg = cfg[part]
    return cfg


def _explain(error: Exception, path: str | None, overrides: list[str]) -> ConfigError:
    """Turn absl's error into one line that names the field and what to write instead."""
    cfg = load_config_file(path) if path else ml_collections.ConfigDict()
    known = field_names(cfg)
    for key in overrides:
        if key not in known:
            leaf = key.rsplit(".", 1)[-1]
            close = [k for k in known if k.rsplit(".", 1)[-1] == leaf]
            close += [k for k in difflib.get_close_matches(key, known, n=5, cutoff=0.5) if k not in close]
            close += [k for k in known if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], cutoff=0.75) and k not in close]
            hint = f" Did you mean: {', '.join(close[:5])}?" if close else ""
            return ConfigError(f"unknown config field '{key}'.{hint} Run with --help to list every field")
    message = str(error).replace("\n", " ")
    for key in overrides:
        if f"--config.{key}=" in message:
            current = lookup(cfg, key)
            return ConfigError(f"{message}: expected {type(current).__name__} (current value {current!r})")
    return ConfigError(message)


def parse_args(argv: list[str] | None = None, default_config: str | None = None) -> ml_collections.ConfigDict:
    """``--config=path`` plus ``--config.section.field=value`` overrides; returns a locked ConfigDict."""
    argv = list(sys.argv[1:] if argv is None else argv)
    path = default_config
    for arg in argv:
        if arg in ("-h", "--help"):
            print(usage(path if path else _config_path(argv)))
            raise SystemExit(0)
        if not arg.startswith("--config"):
            raise ConfigError(f"unexpected argument {arg!r}; use --config=FILE and --config.field=value")
    path = _config_path(argv) or path
    if path is None:
        raise ConfigError("no config given: pass --config=configs/<name>.py")
    if not Path(path).is_file():
        load_config_file(path)  # raises the clear "not found" error
    argv = [f"--config={path}"] + [a for a in argv if not a.startswith("--config=")]
    overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True, sys_argv=["train", *argv])
    try:
        values(["train", *argv])
        return holder.value
    except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
        raise _explain(e, str(path), overrides) from None


def _config_path(argv: list[str]) -> str | None:
    paths = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    return paths[-1] if paths else None


def usage(path: str | None) -> str:
    text = "usage: --config=configs/<name>.py [--config.<section>.<field>=<value> ...]\n"
    if path:
        cfg = load_config_file(path)
        text += f"\nfields of {path}:\n" + "\n".join(f"  {k} = {lookup(cfg, k)!r}" for k in field_names(cfg))
    return text
