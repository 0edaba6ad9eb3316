"""Command-line flags from a settings dataclass: the dataclass is the schema, the flags follow it.

A field declared with :func:`option` becomes ``--field-name`` with its help text, its type (a bool is
``--x/--no-x``, a ``Literal`` gives choices, a tuple takes several values) and its section of the
help. Flags that are not given stay out of the namespace, so a TOML file or the dataclass's default
fills them (:func:`given`). No torch import: ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from collections.abc import Collection, Mapping
from typing import Any, Literal, get_args, get_origin, get_type_hints


def option(help: str, *, section: str = "", **kwargs: Any) -> Any:
    """A dataclass field that is also a flag: its help text and the help section it is listed in."""
    return dataclasses.field(metadata={"help": help, "section": section}, **kwargs)


def flag_name(field_name: str) -> str:
    """``class_noun`` -> ``class-noun`` (the flag is ``--class-noun``)."""
    return field_name.replace("_", "-")


def field_help(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("help", ""))


def _shown(default: Any) -> str | None:
    if default in (None, "", ()):
        return None
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, tuple):
        return " ".join(shlex.quote(str(v)) for v in default)
    return str(default)


def _plain(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    args = get_args(annotation)
    if args and type(None) in args:
        return next(a for a in args if a is not type(None))
    return annotation


def add_flags(
    parser: argparse.ArgumentParser,
    schema: type,
    *,
    sections: Mapping[str, str] | None = None,
    required: Collection[str] = (),
) -> None:
    """One flag per field of ``schema`` that has help text, grouped by each field's section.

    ``sections`` maps a section key to the title its group shows in ``--help`` (in that order);
    ``required`` fields are listed first, in a group that says so, and marked in their help.
    """
    types = get_type_hints(schema)
    groups: dict[str, Any] = {}
    if required:
        groups["required"] = parser.add_argument_group("required (as flags or in --config)")
    for key, title in (sections or {}).items():
        groups[key] = parser.add_argument_group(title)
    for f in dataclasses.fields(schema):
        if "help" not in f.metadata:
            continue  # not a setting a person passes (e.g. internal bookkeeping)
        annotation = _plain(types[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = _shown(default)
        text = field_help(f)
        if f.name in required:
            text += " (required)"
        elif shown is not None and "default" not in text:
            text += f" (default: {shown})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": text}
        section = "required" if f.name in required else f.metadata.get("section", "")
        target = groups.get(section, parser)
        flag = f"--{flag_name(f.name)}"
        if annotation is bool:
            target.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif get_origin(annotation) is Literal:
            target.add_argument(flag, choices=list(get_args(annotation)), **kwargs)
        elif get_origin(annotation) is tuple:
            item = get_args(annotation)[0]
            target.add_argument(flag, nargs="+", type=item, metavar=f.name.upper().rstrip("S"), **kwargs)
        else:
            target.add_argument(flag, type=annotation, metavar=f.name.upper(), **kwargs)


def given(ns: argparse.Namespace, schema: type) -> dict[str, Any]:
    """The fields of ``schema`` the command line set (lists as tuples, as the dataclass holds them)."""
    names = {f.name for f in dataclasses.fields(schema)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in vars(ns).items() if k in names}


__all__ = ["add_flags", "field_help", "flag_name", "given", "option"]
