"""Dataclass configs -> command line and YAML files: the engine every stage script's flags come from.

A config is a dataclass whose fields are declared with `arg(default, help, group)`; `parse_config` builds the
command line from them (one option per field, grouped in --help, each with its help line), then reads
defaults, then `--config FILE.yaml`, then the flags given (which win), and validates the result:

    python code/stageA1_mbm_pretrain.py --mask_ratio 0.65 --num_epoch 800 --no-include_kam
    python code/stageA1_mbm_pretrain.py --config run.yaml --batch_size 64   # the flag wins

Booleans are `--flag/--no-flag` switches, lists take several values (`--kam_subs sbj_1 sbj_3`) and `None` is
spelled `None`. With `--resume RUN` the run's own config.yaml comes first. Values from files are checked to be of
their field's type (`typed_fields`); a bad value is a `ConfigError` naming the field (and the file).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from atomic import write_text_atomically
from bounded import TooLarge, read_yaml, short_repr
from errors import DEBUG_HELP, ArgumentParser, UsageError

GROUPS = ("data", "model", "optimisation", "run")  # the --help groups, in order


class ConfigError(UsageError, ValueError):
    """A configuration value is invalid; the message names the field."""


def check(cond: bool, message: str) -> None:
    """Raise ConfigError(message) unless `cond`."""
    if not cond:
        raise ConfigError(message)


def arg(default: Any, help: str, group: str = "run", cli: bool = True) -> Any:
    """A config field with its --help line and --help group; `cli=False` keeps it off the command line."""
    meta = {"help": help, "group": group, "cli": cli}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


_NONE = ("none", "null")


def _field_types(cls: type) -> dict[str, tuple[type, bool, bool]]:
    """name -> (scalar type, is_list, is_optional) for every dataclass field."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        tp, optional = hints[f.name], False
        args = typing.get_args(tp)
        if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
            optional = type(None) in args
            tp = next(a for a in args if a is not type(None))
        is_list = typing.get_origin(tp) is list
        out[f.name] = (typing.get_args(tp)[0] if is_list else tp, is_list, optional)
    return out


def _parse_scalar(tp: type, optional: bool):
    def parse(text: str):
        if optional and text.lower() in _NONE:
            return None
        return tp(text)

    parse.__name__ = tp.__name__  # argparse names the type in its error messages
    return parse


def build_parser(cls: type, usage: str | None = None) -> argparse.ArgumentParser:
    """One option per command-line field of `cls`, grouped, each with its help; `--config FILE.yaml`, `--debug`.

    `usage` (the script's docstring: what it does and example commands) opens the help text.
    """
    parser = ArgumentParser(
        description=usage or cls.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,  # only flags the user gives override the defaults / YAML
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of field values; flags override it")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    groups = {g: parser.add_argument_group(g) for g in GROUPS}
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        tp, is_list, optional = types_[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata['help']} (default: {default})" if default is not None else f.metadata["help"]
        group = groups[f.metadata.get("group", "run")]
        if tp is bool and not is_list:
            group.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, help=help_text)
        elif is_list:
            group.add_argument(
                f"--{f.name}", nargs="*", type=_parse_scalar(tp, False), metavar=tp.__name__.upper(), help=help_text
            )
        else:
            group.add_argument(
                f"--{f.name}", type=_parse_scalar(tp, optional), metavar=tp.__name__.upper(), help=help_text
            )
    return parser


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping of config fields."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = read_yaml(path) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    except (TooLarge, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a config file of field: value lines: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of field: value, got {type(data).__name__}")
    return data


def from_dict(cls: type, values: dict, strict: bool = True):
    """Build `cls` from a dict of field values (ours, a YAML file, or a published config's attributes).

    With `strict`, unknown keys are an error; otherwise they are ignored (published configs carry fields such as
    `logger` or `HW` that have no meaning here).
    """
    return cls(**typed_fields(cls, values, strict))


def with_our_names(cls: type, values: dict) -> dict:
    """`values` with the published (or former) field names that `cls.read_published` knows mapped to its own."""
    return cls.read_published(values) if hasattr(cls, "read_published") else values


def typed_fields(cls: type, values: dict, strict: bool = True, source: object = None) -> dict:
    """The values of `cls`'s fields in `values`, each checked to be of its field's type (an error names `source`,
    e.g. a YAML file, and the field): a boolean is no number, a list or mapping no text; ints do for floats, and so
    does text that reads as a number (PyYAML reads `1e-4` as text). Published (or former) names are mapped to
    the class's own first (`with_our_names`)."""
    types_ = _field_types(cls)
    try:
        values = with_our_names(cls, values)
        unknown = sorted(short_repr(k) if not isinstance(k, str) else k for k in set(values) - set(types_))
        if strict and unknown:
            more = f" (+{len(unknown) - 10} more)" if len(unknown) > 10 else ""
            raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown[:10])}{more}")
        return {name: _coerce(name, value, *types_[name]) for name, value in values.items() if name in types_}
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}" if source is not None else str(e)) from None


def _coerce(name: str, value: Any, tp: type, is_list: bool, optional: bool) -> Any:
    def refuse(what: str) -> ConfigError:  # built only when a value is refused, quoting it at a bounded length
        return ConfigError(f"{name} must be {what}, got {short_repr(value)}")

    if value is None:
        if not optional:
            raise ConfigError(f"{name} must not be None")
        return None
    if is_list:
        if not isinstance(value, list | tuple):
            raise refuse("a list")
        return [_coerce(name, v, tp, False, False) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise refuse("true or false")
        return value
    if tp in (int, float):
        what = "a whole number" if tp is int else "a number"
        if not isinstance(value, int | float | str) or isinstance(value, bool):
            raise refuse(what)
        try:
            number = int(value) if tp is int and isinstance(value, str) else float(value)
        except (ValueError, OverflowError):
            raise refuse(what) from None
        if not math.isfinite(number):
            raise refuse("a finite number")
        if tp is int:  # a float that is not a whole number would be truncated silently
            if not float(number).is_integer():
                raise refuse(what)
            return int(number)
        return number
    if tp is str:  # numbers become text (the published `precision: 32`); a list, mapping or boolean does not
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise refuse("text")
        return str(value)
    if tp is dict:
        if not isinstance(value, dict):
            raise refuse("a mapping")
        return dict(value)
    raise ConfigError(f"{name}: a field of type {tp.__name__} cannot be read from a file")


def parse_config(cls: type, argv: list[str] | None = None, usage: str | None = None):
    """Defaults, then `--config FILE.yaml`, then command-line flags; validated. Exits with a message on error."""
    parser = build_parser(cls, usage)
    args = vars(parser.parse_args(sys.argv[1:] if argv is None else argv))
    args.pop("debug", None)
    try:
        values = _run_config(cls, args["resume"]) if args.get("resume") else {}
        if "config" in args:
            path = args.pop("config")
            values.update(typed_fields(cls, load_yaml(path), source=path))
        values.update(args)
        return from_dict(cls, values)
    except ConfigError as e:
        parser.error(str(e))


def _run_config(cls: type, resume: str) -> dict:
    """With `--resume RUN`: the run's own config.yaml, so that resuming needs no other flag (flags still win)."""
    run = Path(resume) if Path(resume).is_dir() else Path(resume).parent
    path = run / "config.yaml"
    return typed_fields(cls, load_yaml(path), source=path) if path.is_file() else {}


def config_to_dict(cfg: Any) -> dict:
    """The config as a plain dict (config.yaml, wandb)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, folder: str | os.PathLike) -> Path:
    """Write the resolved config as `config.yaml` into `folder`."""
    path = Path(folder) / "config.yaml"
    return write_text_atomically(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def format_config(cfg: Any) -> str:
    """A readable multi-line listing of the config, for the log."""
    values = config_to_dict(cfg)
    width = max(len(k) for k in values)
    return "\n".join(f"  {k:<{width}} {v}" for k, v in values.items())
