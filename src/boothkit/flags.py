"""Command-line flags from a settings dataclass: the dataclass is the schema, the flags follow it.

A field declared with :func:`option` becomes ``--field-name`` with its help text, its type (a bool is
``--x/--no-x``, a ``Literal`` gives choices, a tuple takes several values) and its section of the
help. Flags that are not given stay out of the namespace, so a TOML file or the dataclass's default
fills them (:func:`given`). No torch import: ``--help`` stays instant.

A number is valid only when finite and in its range: :class:`Number` says the range (a field's is
given to :func:`option`) and :func:`check_numbers` checks a settings object against its schema. A
``Number`` is also the argparse ``type`` of every float flag: a schema's flags refuse only what is not
finite when parsed (the schema checks the range, so a TOML value gets the same message), the flags of
the commands without a schema are checked for their whole range.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
from collections.abc import Collection, Mapping
from typing import Any, Literal, get_args, get_origin, get_type_hints

from boothkit.errors import BoothkitError


@dataclasses.dataclass(frozen=True)
class Number:
    """The valid values of a number: finite, and within the bounds given (none: any finite value).

    ``example`` is a valid value for messages where the setting has no valid default. Called on a
    flag's text, a ``Number`` parses and checks it: the argparse ``type`` of a number flag.
    """

    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None
    example: float | None = None
    integer: bool = False

    def within(self, value: float) -> bool:
        return (
            math.isfinite(value)
            and (self.at_least is None or value >= self.at_least)
            and (self.above is None or value > self.above)
            and (self.at_most is None or value <= self.at_most)
            and (self.below is None or value < self.below)
        )

    def what(self) -> str:
        """The range in words: ``a positive number``, ``>= 0``, ``between 0 and 1``, ``in [0, 1)``."""
        low = self.above if self.at_least is None else self.at_least
        high = self.below if self.at_most is None else self.at_most
        if high is None:
            if low is None:
                return "a finite number"
            if self.above == 0:
                return "a positive integer" if self.integer else "a positive number"
            return f"{'>' if self.at_least is None else '>='} {_number_text(low)}"
        if low is None:
            return f"{'<' if self.at_most is None else '<='} {_number_text(high)}"
        if self.at_least is not None and self.at_most is not None:
            return f"between {_number_text(low)} and {_number_text(high)}"
        opening, closing = "[" if self.above is None else "(", "]" if self.below is None else ")"
        return f"in {opening}{_number_text(low)}, {_number_text(high)}{closing}"

    def sample(self, prefer: float | None = None) -> float:
        """A valid value to show: ``prefer`` (a default) if valid, else the example, else a bound's neighbour."""
        for value in (prefer, self.example, self.at_least, self.at_most):
            if value is not None and self.within(value):
                return value
        if self.above is not None and self.below is not None:
            return (self.above + self.below) / 2
        if self.above is not None:
            return self.above + 1
        return 1 if self.below is None else self.below - 1

    def problem(self, value: float, prefer: float | None = None) -> str | None:
        """What is wrong with ``value`` (None: nothing), with a valid value to use instead."""
        if self.within(value):
            return None
        example = _number_text(self.sample(prefer))
        if math.isnan(value):
            return f"nan is not a number; give a finite value, e.g. {example}"
        if math.isinf(value):
            return f"{_number_text(value)} is not finite; give a finite value, e.g. {example}"
        return f"must be {self.what()}, got {_number_text(value)} (e.g. {example})"

    def __call__(self, text: str) -> float:
        try:
            value: float = int(text) if self.integer else float(text)
        except ValueError:
            kind = "an integer" if self.integer else "a number"
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {kind} (e.g. {_number_text(self.sample())})"
            ) from None
        problem = self.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value


def _number_text(value: float) -> str:
    """``1.0`` -> ``1``, ``0.0001`` -> ``0.0001``, ``nan`` -> ``nan``."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def option(
    help: str,
    *,
    section: str = "",
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
    example: float | None = None,
    **kwargs: Any,
) -> Any:
    """A dataclass field that is also a flag: its help text, the help section it is listed in and, for
    a number, its range (``at_least``/``above``, ``at_most``/``below``) and a valid ``example`` for
    messages when the default is not a valid value (None)."""
    metadata: dict[str, Any] = {"help": help, "section": section}
    number = Number(at_least, above, at_most, below, example)
    if number != Number():
        metadata["number"] = number
    return dataclasses.field(metadata=metadata, **kwargs)


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


_NUMBER_FIELDS: dict[type, tuple[tuple[dataclasses.Field[Any], Number, Any], ...]] = {}


def number_fields(schema: type) -> tuple[tuple[dataclasses.Field[Any], Number, Any], ...]:
    """(field, its range, its default) for every int or float field of ``schema`` (alone, optional or a tuple)."""
    if schema in _NUMBER_FIELDS:
        return _NUMBER_FIELDS[schema]
    types = get_type_hints(schema)
    found: list[tuple[dataclasses.Field[Any], Number, Any]] = []
    for f in dataclasses.fields(schema):
        annotation = _plain(types[f.name])
        if get_origin(annotation) is tuple:
            annotation = get_args(annotation)[0]
        if annotation in (int, float):
            number = dataclasses.replace(f.metadata.get("number", Number()), integer=annotation is int)
            numeric = isinstance(f.default, int | float) and not isinstance(f.default, bool)
            found.append((f, number, f.default if numeric else None))
    _NUMBER_FIELDS[schema] = tuple(found)
    return _NUMBER_FIELDS[schema]


def check_numbers(settings: Any) -> None:
    """Refuse the first number of ``settings`` (a schema's instance) that is not finite or not in its
    field's range, naming the flag and a valid value (the default, else the field's example)."""
    for f, number, default in number_fields(type(settings)):
        value = getattr(settings, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue  # None (the default), or a wrong type that the field's own use reports
            problem = number.problem(v, default)
            if problem is not None:
                raise BoothkitError(f"--{flag_name(f.name)} {problem}")


def _flag_type(annotation: Any, number: Number, default: Any) -> Any:
    """A float flag parses with a finite-only ``Number`` (the schema checks the range, with the
    setting's own message); other types parse as themselves."""
    return Number(example=number.sample(default)) if annotation is float else annotation


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
    numbers = {f.name: (number, default) for f, number, default in number_fields(schema)}
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
            item = _flag_type(get_args(annotation)[0], *numbers.get(f.name, (Number(), None)))
            target.add_argument(flag, nargs="+", type=item, metavar=f.name.upper().rstrip("S"), **kwargs)
        else:
            kind = _flag_type(annotation, *numbers.get(f.name, (Number(), None)))
            target.add_argument(flag, type=kind, metavar=f.name.upper(), **kwargs)


def given(ns: argparse.Namespace, schema: type) -> dict[str, Any]:
    """The fields of ``schema`` the command line set (lists as tuples, as the dataclass holds them)."""
    names = {f.name for f in dataclasses.fields(schema)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in vars(ns).items() if k in names}


__all__ = [
    "Number",
    "add_flags",
    "check_numbers",
    "field_help",
    "flag_name",
    "given",
    "number_fields",
    "option",
]
