"""What a toy-world image shows, and the captions that describe it.

A :class:`Scene` is the complete ground truth of one image: the renderer draws it, the captions
say it in words, and the oracles measure it back. Every attribute comes from a small closed
vocabulary so that a caption can be parsed back into the exact scene it came from.

A caption with a subject ("a photo of a small sks star ...") replaces the colour word by the
subject's token: the subject's look is what the token has to learn, and the class noun stays so
that prior preservation has a class to preserve.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cache

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "diamond", "cross")
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = (
    "top left",
    "top",
    "top right",
    "left",
    "center",
    "right",
    "bottom left",
    "bottom",
    "bottom right",
)
BACKGROUNDS: tuple[str, ...] = (
    "gray",
    "pink",
    "sky",
    "striped",
    "checkered",
    "dotted",
    "grass",
    "water",
    "sand",
    "brick",
)

# English needs a different preposition for edges than for corners; the mapping is one-to-one,
# so parsing is a dictionary lookup.
POSITION_PHRASES: dict[str, str] = {
    "top left": "in the top left",
    "top": "at the top",
    "top right": "in the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right",
}

# Plain colours say "plain" so that no background word doubles as an object colour word.
BACKGROUND_PHRASES: dict[str, str] = {
    "gray": "plain gray",
    "pink": "plain pink",
    "sky": "sky",
    "striped": "striped",
    "checkered": "checkered",
    "dotted": "dotted",
    "grass": "grass",
    "water": "water",
    "sand": "sand",
    "brick": "brick",
}

_PHRASE_TO_POSITION = {phrase: name for name, phrase in POSITION_PHRASES.items()}
_PHRASE_TO_BACKGROUND = {phrase: name for name, phrase in BACKGROUND_PHRASES.items()}
_TEMPLATE_WORDS = ("a", "photo", "of", "on", "background")
_CAPTION_RE = re.compile(
    r"^a photo of a (?P<size>\S+) (?P<color>\S+) (?P<shape>\S+) (?P<position>.+?) on a (?P<background>.+?) background$"
)


@dataclass(frozen=True)
class Scene:
    """The ground truth of one image.

    ``color`` is None only for scenes that will hold a subject: the subject brings its own look,
    so such a scene says where and how big the object is, not what colour.
    """

    shape: str
    color: str | None
    size: str
    position: str
    background: str

    def __post_init__(self) -> None:
        # A typo in an attribute would otherwise surface much later as a wrong render or a
        # caption the tokenizer has never seen.
        _check("shape", self.shape, SHAPES)
        if self.color is not None:
            _check("color", self.color, COLORS)
        _check("size", self.size, SIZES)
        _check("position", self.position, POSITIONS)
        _check("background", self.background, BACKGROUNDS)


def _check(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {field} {value!r}; expected one of {', '.join(allowed)}")


def sample_scene(rng: random.Random) -> Scene:
    """An ordinary scene, every attribute uniform and independent; never holds a subject."""
    return Scene(
        shape=rng.choice(SHAPES),
        color=rng.choice(COLORS),
        size=rng.choice(SIZES),
        position=rng.choice(POSITIONS),
        background=rng.choice(BACKGROUNDS),
    )


def caption(scene: Scene, subject_token: str | None = None) -> str:
    """The one caption of ``scene``; with ``subject_token`` the token takes the colour's place."""
    if subject_token is not None:
        check_subject_token(subject_token)
        look = subject_token
    elif scene.color is None:
        raise ValueError("a scene without a colour needs a subject_token to be captioned")
    else:
        look = scene.color
    return (
        f"a photo of a {scene.size} {look} {scene.shape} {POSITION_PHRASES[scene.position]}"
        f" on a {BACKGROUND_PHRASES[scene.background]} background"
    )


def check_subject_token(token: str) -> None:
    """Raise ValueError unless ``token`` can stand for a subject in a caption: one word, not a world word."""
    # A token that is a vocabulary word or has spaces would make the caption ambiguous to parse.
    if not token or any(ch.isspace() for ch in token) or token in _vocabulary_set():
        raise ValueError(f"subject token {token!r} must be one word outside the caption vocabulary")


def class_prompt(shape: str) -> str:
    """The class prompt of DreamBooth's prior preservation, e.g. "a photo of a star"."""
    _check("shape", shape, SHAPES)
    return f"a photo of a {shape}"


def subject_prompt(subject_token: str, shape: str) -> str:
    """The bare instance prompt, e.g. "a photo of a sks star"."""
    _check("shape", shape, SHAPES)
    check_subject_token(subject_token)
    return f"a photo of a {subject_token} {shape}"


def parse_caption(text: str) -> Scene:
    """The scene a full caption describes; a subject caption gives a scene with ``color=None``."""
    match = _match_caption(text)
    color = match["color"]
    return Scene(
        shape=match["shape"],
        color=color if color in COLORS else None,
        size=match["size"],
        position=_lookup("position", match["position"], _PHRASE_TO_POSITION),
        background=_lookup("background", match["background"], _PHRASE_TO_BACKGROUND),
    )


def parse_subject_token(text: str) -> str | None:
    """The subject token of a full caption, or None when the caption names a colour instead."""
    color = _match_caption(text)["color"]
    return None if color in COLORS else color


def _match_caption(text: str) -> dict[str, str]:
    match = _CAPTION_RE.match(" ".join(text.split()))
    if match is None:
        raise ValueError(f"not a toy-world caption: {text!r}")
    return match.groupdict()


def _lookup(field: str, phrase: str, table: dict[str, str]) -> str:
    if phrase not in table:
        raise ValueError(f"unknown {field} phrase {phrase!r}")
    return table[phrase]


def vocabulary() -> list[str]:
    """Every word a caption or class prompt can contain, sorted; subject tokens are not included."""
    return sorted(_vocabulary_set())


@cache
def _vocabulary_set() -> frozenset[str]:
    words: set[str] = set(_TEMPLATE_WORDS)
    for group in (SHAPES, COLORS, SIZES, POSITION_PHRASES.values(), BACKGROUND_PHRASES.values()):
        for phrase in group:
            words.update(phrase.split())
    return frozenset(words)
