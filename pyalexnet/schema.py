"""Typed config tables: a dataclass's fields are the keys a TOML table may hold.

Shared by the config's sections (pyalexnet.config) and the layer types (pyalexnet.layers),
so every table reports an unknown key, a missing one or a value of the wrong kind the same
way: naming where, the key, and what is allowed.
"""
from __future__ import annotations

import dataclasses
import typing


class ConfigError(ValueError):
    """A network definition that cannot be built; the message names the table and key."""


KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
         tuple: "a list"}


def typed_value(hint, value):
    """``value`` as a field of type ``hint`` (int, float, bool, str, tuple, object or
    Optional[...]); a ValueError names the kind of value expected."""
    if typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint):
        if value is None:
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is object:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is tuple and isinstance(value, list):
        return tuple(value)
    if isinstance(value, hint) and not (hint in (int, float) and isinstance(value, bool)):
        return value
    raise ValueError(KINDS[hint])


def parse_fields(cls, table: dict, where: str, fields=None) -> dict:
    """The values of ``table`` for the dataclass ``cls``'s ``fields`` (default: all),
    typed; unknown keys, missing required keys and wrong kinds are ConfigErrors."""
    fields = dataclasses.fields(cls) if fields is None else fields
    allowed = [f.name for f in fields]
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; "
                          f"allowed: {', '.join(allowed) or 'none'}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields:
        if f.name in table:
            try:
                values[f.name] = typed_value(hints[f.name], table[f.name])
            except ValueError as e:
                raise ConfigError(f"{where}: {f.name} must be {e}, got "
                                  f"{table[f.name]!r}") from None
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where} needs {f.name}")
    return values
