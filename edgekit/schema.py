"""Turn plain YAML/dict data into typed dataclasses, with errors that name the file and the key.

Recipes and target profiles share this one loader, so both reject an unknown key or a wrong type
before any work starts.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints

from .errors import UserError


def build(cls: type, data: Any, where: str, path: str = "") -> Any:
    """Return `cls(**data)` after checking every key and value against the dataclass fields."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: {path or 'the top level'} must be a mapping, got {_kind(data)}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{path}.{unknown[0]}" if path else unknown[0]
        raise UserError(f"{where}: unknown key '{key}' (allowed here: {', '.join(sorted(fields))})")
    values = {}
    for name, value in data.items():
        values[name] = _convert(hints[name], value, where, f"{path}.{name}" if path else name)
    missing = [n for n, f in fields.items() if n not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        key = f"{path}.{missing[0]}" if path else missing[0]
        raise UserError(f"{where}: required key '{key}' is missing")
    return cls(**values)


def _convert(hint: Any, value: Any, where: str, path: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, where, path)
            except UserError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where}: '{path}' is {value!r}; expected one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where, path)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where}: '{path}' must be a list, got {_kind(value)}")
        return [_convert(args[0], v, where, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: '{path}' must be a mapping, got {_kind(value)}")
        return {str(k): _convert(args[1], v, where, f"{path}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (not isinstance(value, hint) or
                                            (hint is int and isinstance(value, bool))):
        raise UserError(f"{where}: '{path}' must be {hint.__name__}, got {_kind(value)} {value!r}")
    return value


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(value), type(value).__name__)


def deep_merge(base: dict, override: dict) -> dict:
    """`override` over `base`, merging nested mappings key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
