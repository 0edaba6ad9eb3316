"""Prompt templates: ``{token}`` and ``{class_noun}`` filled in, and whether a template names the token.

Plain string work, no images and no torch: the configuration checks its prompts with it before
anything loads, and the captions, prompt files and studies fill their templates with it.
"""

from __future__ import annotations

import re
import string

from boothkit.errors import BoothkitError

PLACEHOLDERS = ("token", "class_noun")


def render_prompt(template: str, *, token: str, class_noun: str | None) -> str:
    """Substitute {token} and {class_noun} ({{ and }} are literal braces).

    Any other {placeholder} raises BoothkitError naming it: a typo like {toekn} would otherwise
    train on the literal text. With no class noun the gap it leaves is closed ("a {class_noun}
    photo" -> "a photo", "sks {class_noun}, smiling" -> "sks, smiling").
    """
    values = {"token": token, "class_noun": class_noun or ""}
    out: list[str] = []
    for literal, name, spec, conversion in _fields(template):
        out.append(literal)
        if name is None:
            continue
        if name not in values or spec or conversion:
            shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise BoothkitError(
                f"prompt {template!r} uses unknown placeholder {{{shown}}}",
                hint="only {token} and {class_noun} are substituted; write {{ and }} for literal braces",
            )
        out.append(values[name])
    text = "".join(out)
    if not class_noun:
        text = re.sub(r" +([,.;:!?])", r"\1", re.sub(r" {2,}", " ", text))
    return text.strip()


def names_token(prompt: str, token: str) -> bool:
    """Whether a prompt template names the token: as ``{token}`` or as the word itself."""
    if any(name == "token" for _, name, _, _ in _fields(prompt)):
        return True
    return re.search(rf"(?<!\w){re.escape(token)}(?!\w)", prompt) is not None


def _fields(template: str) -> list[tuple[str, str | None, str | None, str | None]]:
    """(literal text, placeholder name, spec, conversion) runs of a prompt template."""
    try:
        return list(string.Formatter().parse(template))
    except ValueError as e:
        raise BoothkitError(
            f"prompt {template!r} has an unmatched brace ({e})", hint="write {{ and }} for literal braces"
        ) from None


__all__ = ["PLACEHOLDERS", "names_token", "render_prompt"]
