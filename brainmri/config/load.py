"""Loading a run config: a recipe YAML plus overrides → a typed, checked ``RunConfig``.

``load_config`` reads the YAML, applies the command line's overrides, builds the dataclasses with
a type check of every value (``from_dict``) and runs ``brainmri.config.checks.validate``; a
ConfigError names the key and where its bad value came from (the file or the command line).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from brainmri.config.checks import validate
from brainmri.config.overrides import apply_overrides
from brainmri.config.schema import ConfigError, FrozenDict, RunConfig

# Keys that were renamed: the old spelling (a saved config, a sweep, an override) is an error naming the new one.
RENAMED = {
    "data.image_size": "data.input_size",
    "data.channels": "data.input_channels",
    "data.synthetic.image_size": "data.synthetic.render_size",
    "model.channels": "model.conv_widths",
}


def check_mapping(data: Any, valid, error: type[Exception], not_mapping: str, unknown) -> dict:
    """``data`` when it is a non-empty mapping whose keys are all in ``valid``; else ``error(not_mapping)``,
    or ``error(unknown(key))`` for the first unknown key (sorted)."""
    if not isinstance(data, dict) or not data:
        raise error(not_mapping)
    bad = sorted(set(data) - set(valid))
    if bad:
        raise error(unknown(bad[0]))
    return data


def _build(cls, data: dict[str, Any], prefix: str = ""):
    """An instance of the dataclass ``cls`` from a mapping, each value type-checked; ``prefix`` is its dotted key."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    for key in unknown:
        old = f"{prefix}.{key}" if prefix else key
        if old in RENAMED:
            raise ConfigError(f"config key {old} was renamed {RENAMED[old]}: write {RENAMED[old]}")
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]!s} (valid keys under "
            f"{prefix or 'the top level'}: {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def _hints(cls) -> dict[str, Any]:
    """The field annotations of dataclass ``cls``, resolved to types."""
    return typing.get_type_hints(cls)


_LEAVES = {float: "a number", int: "an integer", bool: "true/false", str: "a string"}  # what each leaf type expects


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key)
    if origin in (list, tuple):  # read-only once loaded: lists become tuples
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return FrozenDict({str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()})
    if tp in _LEAVES:
        return _leaf(value, tp, key)
    return value


def _leaf(value: Any, tp: type, key: str) -> Any:
    """A scalar ``value`` checked against its type ``tp`` (a ``_LEAVES`` key): a bool is not a number,
    an int is a float where a float is expected."""
    accepted = (int, float) if tp is float else tp
    ok = isinstance(value, accepted) and (tp is bool or not isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{key}: expected {_LEAVES[tp]}, got {value!r}")
    return float(value) if tp is float else value


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML in {path}: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def recipe_name(path: str | Path, data: dict[str, Any] | None = None) -> str:
    """The recipe a YAML defines: its ``recipe:`` key, else its file name (``configs/efficientnet_b0.yaml``
    → ``efficientnet_b0``)."""
    data = read_yaml(path) if data is None else data
    return str(data.get("recipe") or Path(path).stem)


def from_dict(data: dict[str, Any]) -> RunConfig:
    cfg = _build(RunConfig, data)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a recipe YAML and apply ``key=value`` overrides.

    Args:
        path: a recipe YAML (``configs/<recipe>.yaml``) or None for the defaults.
        overrides: dotted ``key=value`` strings, e.g. ``["optim.lr=3e-4", "data.root=/data"]``.
    Returns:
        A validated ``RunConfig``.
    Raises:
        ConfigError naming the file, key or value that is wrong.
    """
    data = read_yaml(path) if path is not None else {}
    if path is not None:
        data.setdefault("recipe", recipe_name(path, data))
    file_only = copy.deepcopy(data)
    try:
        apply_overrides(data, overrides)
    except ConfigError as e:
        raise ConfigError(f"command line: {e}") from None
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{_blame(file_only, path, bool(overrides))}: {e}") from None


def _blame(file_only: dict[str, Any], path: str | Path | None, overridden: bool) -> str:
    """Where a bad value came from: the file when the file alone is already wrong, else the command line."""
    if not overridden:
        return str(path) if path else "config"
    try:
        from_dict(file_only)
    except ConfigError:
        return str(path) if path else "config"
    return f"command line (with {path})" if path else "command line"
