"""Dotted ``key=value`` overrides: parsing a value, applying it to a config mapping, flattening one.

The command line, a sweep's grid and a search space all spell a config key the same way
(``optim.lr``, ``train.phases.1.epochs``); this module reads and writes that spelling on plain
mappings, before ``brainmri.config.load`` builds and checks a ``RunConfig`` from them.
"""

from __future__ import annotations

import ast
from typing import Any

import yaml

from brainmri.config.schema import CHOICES, ConfigError

TEXT_KEYS = ("data.dicom.window", "data.test_site", "data.manifest")  # an override's text is the value as typed


def parse_value(text: str, key: str | None = None) -> Any:
    """Parse the value of a ``key=value`` override: Python/YAML literal, else a plain string.

    A word that is one of ``key``'s choices stays that word (``data.cache=none`` is the choice
    "none", not null).
    """
    if key is not None and (text.strip() in CHOICES.get(key, ()) or key in TEXT_KEYS):
        return text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    lowered = text.strip().lower()
    if lowered in ("null", "none", "~"):
        return None
    if lowered in ("yes", "no", "on", "off", "y", "n"):
        return text  # YAML 1.1 would read these as booleans; mixed_precision=no means the string
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``dotted = "a.b.c"``; a numeric part indexes a list
    (``train.phases.1.epochs=5``)."""
    parts = dotted.split(".")
    node: Any = tree
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {dotted}: {part!r} is not an index of a list of {len(node)}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {'.'.join(parts[:depth])} is not a mapping")
        if last:
            node[part] = value
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 2}}`` → ``{"train.epochs": 2}`` (the spelling of overrides)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def split_override(item: str) -> tuple[str, str]:
    """``"key=value"`` → ``(key, value text)``; anything else is a ConfigError naming it."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, text = item.split("=", 1)
    return key.strip(), text


def apply_overrides(tree: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> None:
    """Apply ``key=value`` strings to a config mapping in place."""
    for item in overrides:
        key, text = split_override(item)
        apply_override(tree, key, parse_value(text, key))

