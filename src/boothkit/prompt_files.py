"""Prompt files: one prompt per line, or the DreamBooth dataset's `prompts_and_classes.txt`.

A plain file is one list of prompt templates (`{token}` and `{class_noun}` are filled in). A
Python-style file, like the DreamBooth dataset's, holds several lists (`object_prompts = [ ... ]`)
of `'a {0} {1} in the jungle'.format(unique_token, class_token)` lines: they are parsed, never run.
"""

from __future__ import annotations

import ast
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from boothkit.errors import BoothkitError
from boothkit.templates import render_prompt

# The DreamBooth paper used its "live subject" prompts (outfits, accessories) for dogs and cats.
LIVE_CLASSES = frozenset({"dog", "cat", "dogs", "cats", "puppy", "kitten"})


@dataclass(frozen=True)
class PromptSet:
    """One list of prompt templates (with {token} / {class_noun}) from a prompt file."""

    name: str  # "object", "live", ... from the heading above the list; "" for a plain file
    heading: str
    templates: tuple[str, ...]


_LIST_OPEN = re.compile(r"^[A-Za-z_]\w*\s*=\s*\[\s*$")
_TOKEN_NAMES = {"unique_token", "token", "identifier", "instance_token"}
_CLASS_NAMES = {"class_token", "class_noun", "class_name", "class_word", "class"}


def _escape_braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _python_template(line: str, where: str) -> str:
    """`'a {0} {1} in the jungle'.format(unique_token, class_token),` -> 'a {token} {class_noun} in the jungle'.

    Parsed with `ast`, never evaluated: only a string literal, optionally with `.format(...)` of
    names that mean the token or the class, is accepted.
    """
    expr = line.rstrip().removesuffix(",").rstrip()
    try:
        node = ast.parse(expr, mode="eval").body
    except SyntaxError:
        raise BoothkitError(f"{where}: {line.strip()!r} is not a quoted prompt") from None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "format"
        and isinstance(node.func.value, ast.Constant)
        and isinstance(node.func.value.value, str)
        and not node.keywords
        and all(isinstance(a, ast.Name) for a in node.args)
    ):
        raise BoothkitError(
            f"{where}: {line.strip()!r} is not a prompt line",
            hint="expected 'a {0} {1} ...'.format(unique_token, class_token), or a plain quoted string",
        )
    placeholders = []
    for arg in node.args:
        name = arg.id  # type: ignore[attr-defined]
        if name in _TOKEN_NAMES:
            placeholders.append("{token}")
        elif name in _CLASS_NAMES:
            placeholders.append("{class_noun}")
        else:
            raise BoothkitError(
                f"{where}: .format() argument {name!r} is neither the token nor the class",
                hint="use unique_token and class_token as in the DreamBooth dataset's prompt file",
            )
    out, auto = [], 0
    try:
        parts = list(string.Formatter().parse(node.func.value.value))
    except ValueError as e:
        raise BoothkitError(f"{where}: {line.strip()!r} has an unmatched brace ({e})") from None
    for literal, fname, spec, conversion in parts:
        out.append(_escape_braces(literal))
        if fname is None:
            continue
        if fname == "":
            index, auto = auto, auto + 1
        elif fname.isdigit():
            index = int(fname)
        else:
            raise BoothkitError(f"{where}: named field {{{fname}}} in a .format() prompt is not supported")
        if spec or conversion or index >= len(placeholders):
            raise BoothkitError(f"{where}: field {{{fname}}} has no matching .format() argument")
        out.append(placeholders[index])
    return "".join(out)


def _set_name(heading: str, index: int) -> str:
    words = heading.strip().lower().split()
    return words[0] if words else f"list{index + 1}"


def parse_prompt_sets(text: str, source: str = "prompt file") -> list[PromptSet]:
    """The prompt lists in a prompt file.

    Plain files: one prompt per line, blank lines and `#` comments skipped -> one unnamed set.
    Python-style files (any line `name = [`), like the DreamBooth dataset's
    `prompts_and_classes.txt`: each `[ ... ]` block is a set, named by the first word of the last
    line of text above it ("Object Prompts" -> "object", "Live Subject Prompts" -> "live"); text
    outside the blocks (headings, the class table) is not a prompt.
    """
    lines = text.splitlines()
    python_style = any(_LIST_OPEN.match(line.strip()) for line in lines)
    sets: list[PromptSet] = []
    heading, opened_at, current = "", 0, []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not python_style:
            current.append(line)
        elif not opened_at:
            if _LIST_OPEN.match(line):
                opened_at, current = number, []
            else:
                heading = line
        elif line.startswith("]"):
            sets.append(PromptSet(_set_name(heading, len(sets)), heading, tuple(current)))
            opened_at = 0
        else:
            current.append(_python_template(line, f"{source}, line {number}"))
    if opened_at:
        raise BoothkitError(f"{source}: the list opened at line {opened_at} is never closed with ]")
    if not python_style:
        sets = [PromptSet("", "", tuple(current))]
    sets = [s for s in sets if s.templates]
    if not sets:
        raise BoothkitError(f"{source} holds no prompts", hint="write one prompt per line")
    return sets


def choose_prompt_set(sets: Sequence[PromptSet], wanted: str | None, class_noun: str | None) -> PromptSet:
    """`wanted` by name or heading; by default the live-subject list for dogs and cats (as in the
    DreamBooth paper) when the file has one, else the first list."""
    if wanted:
        key = wanted.strip().lower()
        for s in sets:
            if key in (s.name, s.heading.lower()) or (s.heading and s.heading.lower().startswith(key)):
                return s
        names = ", ".join(s.name for s in sets if s.name) or "none: the file is one plain list"
        raise BoothkitError(f"--prompt-set {wanted!r} is not in the prompt file", hint=f"its sets: {names}")
    if class_noun and class_noun.strip().lower() in LIVE_CLASSES:
        for s in sets:
            if s.name == "live":
                return s
    return sets[0]


def load_prompts(
    path: str | Path, *, token: str = "sks", class_noun: str | None = None, prompt_set: str | None = None
) -> tuple[PromptSet, list[str]]:
    """Read a prompt file and render its chosen set with the token and class noun."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise BoothkitError(
            f"--prompts-file {path}: {file} does not exist",
            hint="one prompt per line; {token} and {class_noun} are filled in",
        )
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise BoothkitError(f"--prompts-file {path}: could not read it as UTF-8 text ({e})") from None
    chosen = choose_prompt_set(parse_prompt_sets(text, str(file)), prompt_set, class_noun)
    if class_noun is None and any("{class_noun}" in t for t in chosen.templates):
        raise BoothkitError(
            f"the prompts in {file} name the class ({{class_noun}} / class_token)",
            hint="pass --class-noun, e.g. --class-noun dog",
        )
    return chosen, [render_prompt(t, token=token, class_noun=class_noun) for t in chosen.templates]


__all__ = ["LIVE_CLASSES", "PromptSet", "choose_prompt_set", "load_prompts", "parse_prompt_sets"]
