"""Frozen, versioned, JSON-round-tripping configs shared by every verb.

Every config is a frozen dataclass that validates itself in ``__post_init__``. ``to_dict`` /
``from_dict`` round-trip through JSON (enums by value, tuples as lists, nested configs as dicts),
so every artifact we write can carry the config that made it. ``add_arguments`` / ``from_args``
build an argparse parser from the same dataclass, so the CLI has no second description of options.
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import types
import typing
from typing import Any, TypeVar

CONFIG_VERSION = 1

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is invalid; the message names the field."""


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-JSON dict of a config dataclass (recursively)."""
    return {f.name: _encode(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _decode(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if origin is tuple:
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_decode(inner, v) for v in value)
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return [_decode(inner, v) for v in value]
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a config from ``to_dict`` output; unknown keys are an error (a typo is not a default)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}; valid: {sorted(names)}")
    kwargs = {k: _decode(hints[k], v) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{cls.__name__}: {e}") from e


def to_json(cfg: Any) -> str:
    return json.dumps({"config_version": CONFIG_VERSION, "type": type(cfg).__name__, **to_dict(cfg)},
                      indent=2, sort_keys=True)


def from_json(cls: type[T], text: str) -> T:
    data = json.loads(text)
    version = data.pop("config_version", CONFIG_VERSION)
    if version > CONFIG_VERSION:
        raise ConfigError(f"{cls.__name__}: config version {version} is newer than this leanlm ({CONFIG_VERSION})")
    data.pop("type", None)
    return from_dict(cls, data)


def require(cond: bool, message: str) -> None:
    """Validation helper for ``__post_init__``."""
    if not cond:
        raise ConfigError(message)


# ---------------------------------------------------------------- argparse from dataclasses
def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add ``--field-name`` options for each field of ``cls`` (help text from field metadata)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        tp = _unwrap_optional(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_} (default: {default})")
        elif isinstance(tp, type) and issubclass(tp, enum.Enum):
            parser.add_argument(flag, dest=f.name, choices=[m.value for m in tp], default=None,
                                help=f"{help_} (default: {_encode(default)})")
        elif typing.get_origin(tp) in (tuple, list):
            inner = (typing.get_args(tp) or (str,))[0]
            parser.add_argument(flag, dest=f.name, nargs="+", type=inner if inner in (int, float) else str,
                                default=None, help=f"{help_} (default: {_encode(default)})")
        else:
            parser.add_argument(flag, dest=f.name, type=tp if tp in (int, float, str) else str, default=None,
                                help=f"{help_} (default: {default})")


def from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build ``cls`` from parsed args: options left unset keep the dataclass default."""
    names = {f.name for f in dataclasses.fields(cls)}
    data = {k: v for k, v in vars(args).items() if k in names and v is not None}
    data.update(overrides)
    return from_dict(cls, data)
