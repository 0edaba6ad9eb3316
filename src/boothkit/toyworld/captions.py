"""What the toy base model is trained and evaluated on: scenes, their captions, and the words it knows.

Some (shape, colour) and (shape, background) pairs never occur in training
(:data:`HELD_OUT_COLORS`, :data:`HELD_OUT_BACKGROUNDS`); prompt fidelity is measured on those
combinations only (:func:`held_out_scenes`). Training captions leave attributes out at random (so
short prompts such as "a photo of a star" mean something) and are sometimes empty (so
classifier-free guidance works). Some multi-colour objects are named individuals
(:data:`INDIVIDUALS`), each a made-up name with one shape and one look of its own.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from boothkit.toyworld.scene import (
    BACKGROUND_PHRASES,
    BACKGROUNDS,
    COLORS,
    POSITION_PHRASES,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    caption,
    vocabulary,
)
from boothkit.toyworld.settings import PretrainSettings
from boothkit.toyworld.subjects import multicolor_paint

# Identifiers a DreamBooth prompt may use: in the tokenizer's corpus so that each is one piece, but
# in no training caption unless ``named_share`` draws them.
TOKENIZER_IDENTIFIERS: tuple[str, ...] = ("sks", "zwx", "ohwx", "phol", "bnha")

# Combinations that pretraining never shows: one colour and one background per shape.
HELD_OUT_COLORS: dict[str, str] = {shape: COLORS[(3 * i + 1) % len(COLORS)] for i, shape in enumerate(SHAPES)}
HELD_OUT_BACKGROUNDS: dict[str, str] = {
    shape: BACKGROUNDS[(3 * i + 2) % len(BACKGROUNDS)] for i, shape in enumerate(SHAPES)
}


def is_held_out(scene: Scene) -> bool:
    """Whether the scene uses one of the combinations pretraining never shows."""
    return (
        HELD_OUT_COLORS[scene.shape] == scene.color or HELD_OUT_BACKGROUNDS[scene.shape] == scene.background
    )


def training_scene(rng: random.Random) -> Scene:
    """A uniformly random scene outside the held-out combinations."""
    while True:
        scene = Scene(
            shape=rng.choice(SHAPES),
            color=rng.choice(COLORS),
            size=rng.choice(SIZES),
            position=rng.choice(POSITIONS),
            background=rng.choice(BACKGROUNDS),
        )
        if not is_held_out(scene):
            return scene


def held_out_scenes(n: int, seed: int = 1234) -> list[Scene]:
    """``n`` scenes, each with a held-out (shape, colour) or (shape, background) pair, alternating."""
    rng = random.Random(seed)
    scenes = []
    for i in range(n):
        shape = SHAPES[i % len(SHAPES)]
        if (i // len(SHAPES)) % 2 == 0:
            color = HELD_OUT_COLORS[shape]
            background = rng.choice(BACKGROUNDS)
        else:
            color = rng.choice(COLORS)
            background = HELD_OUT_BACKGROUNDS[shape]
        scenes.append(Scene(shape, color, rng.choice(SIZES), rng.choice(POSITIONS), background))
    return scenes


def partial_caption(scene: Scene, keep: Iterable[str], name: str = "") -> str:
    """The scene's caption with only the attributes in ``keep`` said (the shape is always said),
    and ``name`` (if any) right before the shape, where a DreamBooth prompt puts its identifier."""
    kept = set(keep)
    words = ["a photo of a"]
    if "size" in kept:
        words.append(scene.size)
    if "color" in kept and scene.color is not None:
        words.append(scene.color)
    if name:
        words.append(name)
    words.append(scene.shape)
    if "position" in kept:
        words.append(POSITION_PHRASES[scene.position])
    if "background" in kept:
        words.append(f"on a {BACKGROUND_PHRASES[scene.background]} background")
    return " ".join(words)


@dataclass(frozen=True)
class NamedScene(Scene):
    """A scene whose object is the individual ``name`` (:data:`INDIVIDUALS`), drawn in its own look."""

    name: str = ""


def _individuals() -> dict[str, tuple[str, int]]:
    """Made-up names -> (shape, paint seed): consonant-vowel words the captions never use."""
    rng = random.Random(2026)
    names: dict[str, tuple[str, int]] = {}
    while len(names) < 48:
        word = "".join(rng.choice("bdgkmnprtvz") + rng.choice("aeiou") for _ in range(rng.choice((2, 3))))
        if word not in names and word not in TOKENIZER_IDENTIFIERS:
            names[word] = (SHAPES[len(names) % len(SHAPES)], rng.randrange(1 << 30))
    return names


# Up to 48 individuals; ``PretrainSettings.individuals`` = N uses the first N. A name is several
# tokenizer pieces, never one of the identifiers.
INDIVIDUALS: dict[str, tuple[str, int]] = _individuals()


def individual_paint(name: str) -> Any:
    """The one look of individual ``name``: a multi-colour paint of its shape (never a subject's)."""
    shape, seed = INDIVIDUALS[name]
    return multicolor_paint(random.Random(seed), shape)[0]


def training_caption(scene: Scene, rng: random.Random, settings: PretrainSettings) -> str:
    """A caption for training: empty (classifier-free guidance), full, or with attributes left out."""
    if rng.random() < settings.caption_dropout:
        return ""
    if isinstance(scene, NamedScene):  # an individual is always named, its look never described
        keep = [a for a in ("size", "position", "background") if rng.random() >= settings.attribute_dropout]
        return partial_caption(scene, keep, scene.name)
    keep = [
        a for a in ("size", "color", "position", "background") if rng.random() >= settings.attribute_dropout
    ]
    if len(keep) == 4 and scene.color is not None:
        return caption(scene)
    # A multi-colour object (no colour) is never given a colour word; without individuals it may be
    # named by an identifier drawn afresh each time.
    name = ""
    if (
        scene.color is None
        and not settings.individuals
        and settings.named_share > 0
        and rng.random() < settings.named_share
    ):
        name = rng.choice(TOKENIZER_IDENTIFIERS)
    return partial_caption(scene, keep, name)


def tokenizer_corpus() -> list[str]:
    """Captions and words the tokenizer learns from: every vocabulary word and the identifiers."""
    rng = random.Random(0)
    lines = [caption(training_scene(rng)) for _ in range(200)]
    lines += [" ".join(vocabulary())] * 5
    lines += [f"a photo of a {token} {shape}" for token in TOKENIZER_IDENTIFIERS for shape in SHAPES]
    return lines
