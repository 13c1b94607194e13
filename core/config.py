"""The configuration convention of the pipeline and the trainer: dataclasses whose fields are
declared with `option(default, doc)`.

The doc lives in the field's metadata, so it is there at runtime, in one place: the renderer
writes it above the field as a comment (`talkcurate config`, `python -m train --print-config`),
and tests can check that every option has one. A section (a field whose type is a dataclass, or
a list of them for an array of tables such as the trainer's `[[curriculum]]`) is documented by
its class's docstring.

Values come from TOML tables and `KEY=VALUE` overrides with dotted keys; `build` checks them
against the fields' type hints, converting what TOML cannot say (tuples come as lists, an int is
accepted for a float, the string "null" is None where None is allowed).
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MB = 1_000_000
"""Bytes in the MB of every size option (`*_mb`)."""


def option(default: Any, doc: str, **kwargs: Any) -> Any:
    """A documented configuration field."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"doc": doc}, **kwargs)
    return dataclasses.field(default=default, metadata={"doc": doc}, **kwargs)


def parse_value(raw: str) -> Any:
    """A TOML value (8, 2.5, true, "x", [1, 2], {a = 1}); anything else is taken as a plain string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def read_table(path: str | Path | None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """The TOML file at `path` (none: an empty table) with each `section.key=VALUE` override set in
    it, nested tables made as needed."""
    table = tomllib.loads(Path(path).read_text(encoding="utf-8")) if path else {}
    for text in overrides:
        dotted, sep, raw = text.partition("=")
        if not sep or not dotted.strip():
            raise ValueError(f"an override is KEY=VALUE, not {text!r}")
        *parents, key = dotted.strip().split(".")
        inner = table
        for parent in parents:
            inner = inner.setdefault(parent, {})
            if not isinstance(inner, dict):
                raise ValueError(f"override {text!r}: {parent} is not a section")
        inner[key] = parse_value(raw.strip())
    return table


def build(cls: type, table: dict[str, Any], where: str = "") -> Any:
    """An instance of the dataclass `cls` from a TOML table: the fields it gives, checked against
    their type hints; the others keep their defaults. `where` is the table's dotted name."""
    fields = {spec.name: spec for spec in dataclasses.fields(cls) if spec.init}
    unknown = [key for key in table if key not in fields]
    if unknown:
        names = ", ".join(repr(_dotted(where, key)) for key in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise KeyError(f"unknown option{plural} {names}; {where or 'the top level'} has: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{key: _coerce(value, hints[key], _dotted(where, key)) for key, value in table.items()})


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """`value` as the type `hint` says, or a ValueError naming `where` and the expected type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and value in (None, "null"):
            return None
        for member in args:
            try:
                return _coerce(value, member, where)
            except ValueError:
                pass
    elif dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            return build(hint, value, where)
    elif (origin or hint) is list:
        if isinstance(value, list):
            return [_coerce(item, args[0], f"{where}[{i}]") for i, item in enumerate(value)] if args else value
    elif (origin or hint) is tuple:
        if isinstance(value, (list, tuple)):
            if not args:
                return tuple(value)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_coerce(item, args[0], f"{where}[{i}]") for i, item in enumerate(value))
            if len(value) == len(args):
                return tuple(_coerce(item, arg, f"{where}[{i}]") for i, (item, arg) in enumerate(zip(value, args)))
    elif (origin or hint) is dict:
        if isinstance(value, dict):
            return value
    elif hint is Any:
        return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint in (bool, str, type(None)):
        if isinstance(value, hint):
            return value
    else:
        raise TypeError(f"{where}: a configuration field cannot be of type {_type_name(hint)}")
    raise ValueError(f"{where} must be {_type_name(hint)}, got {value!r}")


def _type_name(hint: Any) -> str:
    """The type as it is written in an annotation: `int`, `float | None`, `tuple[int, ...]`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in args)
    if args:
        return f"{origin.__name__}[{', '.join('...' if arg is Ellipsis else _type_name(arg) for arg in args)}]"
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


def render(config: Any, comment: str = "") -> str:
    """`config` as TOML with each option's doc above it, what `build` reads back: a dataclass, or a
    dict of section name to dataclass. `comment` opens the file. TOML has no null: an option that
    is None is shown commented out."""
    lines = [*(f"# {line}" for line in comment.splitlines()), ""] if comment else []
    _render_table(config, "", lines)
    return "\n".join(lines)


def _render_table(table: Any, path: str, lines: list[str]) -> None:
    if isinstance(table, dict):
        entries = [(name, value, "") for name, value in table.items()]
    else:
        entries = [
            (spec.name, getattr(table, spec.name), spec.metadata.get("doc", "")) for spec in dataclasses.fields(table)
        ]
    options = [(name, value, doc) for name, value, doc in entries if not _is_section(value)]
    for name, value, doc in options:
        lines.extend(f"# {line}" for line in doc.splitlines())
        lines.append(f"# {name} = (unset)" if value is None else f"{name} = {_toml_value(value)}")
    if options or path:
        lines.append("")  # a blank line ends each section's options, even when it has none
    for name, value, _ in entries:
        key = _dotted(path, name)
        if dataclasses.is_dataclass(value):
            lines.append(f"[{key}]{_summary(value)}")
            _render_table(value, key, lines)
        elif _is_section(value):
            for item in value:
                lines.append(f"[[{key}]]{_summary(item)}")
                _render_table(item, key, lines)


def _is_section(value: Any) -> bool:
    """A table of its own in TOML: a dataclass, or a non-empty list of them (an array of tables)."""
    if isinstance(value, list) and value:
        return all(dataclasses.is_dataclass(item) for item in value)
    return dataclasses.is_dataclass(value)


def _summary(section: Any) -> str:
    """The comment after a section's header: the first line of its class's docstring."""
    doc = (type(section).__doc__ or "").strip()
    return f"  # {doc.splitlines()[0]}" if doc else ""


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_value(value: Any) -> str:
    """A TOML value: a bool, number, string, array or inline table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's string escapes are TOML's
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (
            f"{key if _BARE_KEY.fullmatch(key) else json.dumps(key)} = {_toml_value(v)}" for key, v in value.items()
        )
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"no TOML value for {value!r}")


def _dotted(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
