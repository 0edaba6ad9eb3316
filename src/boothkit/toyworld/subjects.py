"""Unique subjects: particular objects that DreamBooth has to learn from a few photos.

Each subject is a member of one shape class (so its class noun and prior exist) but is painted in
several colours in a fixed layout. Ordinary scenes are always one colour, so :func:`sample_scene`
never produces a subject, and captions have no words for these looks: the only way to get one
from a model is through a learned subject token.

Two design rules keep subjects measurable: every colour region is thick enough to survive blur
at the small size (so the subject oracle can read its colour), and colours that meet are listed
next to each other in ``Subject.colors`` and blend without passing any background colour
(``oracles.blendable_pairs``), so a blurred seam never looks like background.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from boothkit.toyworld.render import OBJECT_RGB, FloatArray, Pattern, render_pattern
from boothkit.toyworld.scene import COLORS, POSITIONS, SIZES, Scene

# Backgrounds of the instance photos: plain, like a person photographing an object on a table.
INSTANCE_BACKGROUNDS: tuple[str, ...] = ("gray", "pink", "sky")


@dataclass(frozen=True)
class Subject:
    """One unique object: its name, its class noun, and how its surface is painted.

    ``colors`` lists the colours it uses, neighbouring regions next to each other.
    """

    name: str
    shape: str
    colors: tuple[str, ...]
    description: str
    pattern: Pattern


def _rgb(color: str) -> FloatArray:
    return np.asarray(OBJECT_RGB[color], dtype=np.float64)


def _pick(condition: NDArray[np.bool_], where_true: str, where_false: str) -> FloatArray:
    """Per point, one of two named colours: (N,) condition -> (N, 3) RGB."""
    return np.where(condition[:, None], _rgb(where_true)[None], _rgb(where_false)[None])


def _rings(inner: str, middle: str, outer: str, r1: float, r2: float) -> Pattern:
    def paint(x: FloatArray, y: FloatArray) -> FloatArray:
        r = np.hypot(x, y)
        return np.where((r < r1)[:, None], _rgb(inner)[None], _pick(r < r2, middle, outer))

    return paint


def _quadrants(first: str, second: str) -> Pattern:
    def paint(x: FloatArray, y: FloatArray) -> FloatArray:
        return _pick(x * y > 0, first, second)

    return paint


def _halves(left: str, right: str) -> Pattern:
    def paint(x: FloatArray, y: FloatArray) -> FloatArray:
        return _pick(x < 0, left, right)

    return paint


def _halves_vertical(top: str, bottom: str) -> Pattern:
    def paint(x: FloatArray, y: FloatArray) -> FloatArray:
        return _pick(y > 0, top, bottom)

    return paint


def _disc(center: str, rest: str, radius: float, dy: float = 0.0) -> Pattern:
    def paint(x: FloatArray, y: FloatArray) -> FloatArray:
        return _pick(np.hypot(x, y - dy) < radius, center, rest)

    return paint


def _subject(name: str, shape: str, colors: tuple[str, ...], description: str, pattern: Pattern) -> Subject:
    return Subject(name=name, shape=shape, colors=colors, description=description, pattern=pattern)


SUBJECTS: dict[str, Subject] = {
    s.name: s
    for s in (
        _subject(
            "target_circle",
            "circle",
            ("blue", "purple", "red"),
            "a roundel: blue centre, purple ring, red outer ring",
            _rings("blue", "purple", "red", 0.42, 0.72),
        ),
        _subject(
            "checker_square",
            "square",
            ("red", "yellow"),
            "a square split into 2x2 checks, red top right and bottom left, yellow elsewhere",
            _quadrants("red", "yellow"),
        ),
        _subject(
            "split_triangle",
            "triangle",
            ("green", "yellow"),
            "a triangle, left half green and right half yellow",
            _halves("green", "yellow"),
        ),
        _subject(
            "split_star",
            "star",
            ("purple", "orange"),
            "a star, left half purple and right half orange",
            _halves("purple", "orange"),
        ),
        _subject(
            "emblem_heart",
            "heart",
            ("yellow", "green"),
            "a green heart with a large yellow disc emblem",
            _disc("yellow", "green", 0.5, dy=0.1),
        ),
        _subject(
            "twotone_diamond",
            "diamond",
            ("red", "yellow"),
            "a diamond, top half red and bottom half yellow",
            _halves_vertical("red", "yellow"),
        ),
    )
}

# Subjects the unit tests of training may use, and subjects held out for the benchmark.
TEST_SUBJECTS: tuple[str, ...] = ("target_circle", "checker_square")
BENCH_SUBJECTS: tuple[str, ...] = ("split_triangle", "split_star", "emblem_heart", "twotone_diamond")


def render_subject(subject: Subject, scene: Scene, size: int = 64, seed: int = 0) -> Image.Image:
    """``subject`` in ``scene``: position, size and background from the scene, its colour ignored.

    The scene's shape must be the subject's class: a subject is always drawn as what it is.
    """
    if scene.shape != subject.shape:
        raise ValueError(f"subject {subject.name!r} is a {subject.shape}, scene asks for a {scene.shape}")
    return render_pattern(scene, subject.pattern, size, seed=seed)


def instance_scenes(subject: Subject, n: int = 5) -> list[Scene]:
    """The contexts of the subject's instance photos: plain backgrounds, varied position and size.

    Fixed per subject (seeded by its name), distinct positions, both sizes and every plain
    background represented as soon as n allows.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    rng = random.Random(zlib.crc32(subject.name.encode()))
    positions = rng.sample(POSITIONS, len(POSITIONS))
    first_size = rng.randrange(len(SIZES))
    first_bg = rng.randrange(len(INSTANCE_BACKGROUNDS))
    return [
        Scene(
            shape=subject.shape,
            color=None,
            size=SIZES[(first_size + i) % len(SIZES)],
            position=positions[i % len(positions)],
            background=INSTANCE_BACKGROUNDS[(first_bg + i) % len(INSTANCE_BACKGROUNDS)],
        )
        for i in range(n)
    ]


def instance_images(subject: Subject, n: int = 5, size: int = 64) -> list[Image.Image]:
    """The subject's n instance photos (DreamBooth's few input images), one per instance scene."""
    return [
        render_subject(subject, scene, size, seed=i) for i, scene in enumerate(instance_scenes(subject, n))
    ]


# --------------------------------------------------------------------------- decoder training paints


def _rotated(pattern: Pattern, angle: float) -> Pattern:
    c, s = np.cos(angle), np.sin(angle)

    def paint(x: FloatArray, y: FloatArray) -> FloatArray:
        return pattern(c * x - s * y, s * x + c * y)

    return paint


def _is_subject_look(shape: str, colors: tuple[str, ...]) -> bool:
    return any(s.shape == shape and set(s.colors) == set(colors) for s in SUBJECTS.values())


def multicolor_paint(rng: random.Random, shape: str) -> tuple[Pattern, tuple[str, ...]]:
    """A random multi-colour paint for a ``shape``, never with a subject's (shape, colour set).

    For the VAE's decoder only (``pretrain.refine_decoder``): ordinary scenes are one colour, so a
    decoder trained on them alone blurs a subject's colour regions into one. These paints teach
    it to keep regions and seams in general: halves split at any angle, a disc emblem of any size
    and offset, rings, rotated quadrants, in any colours. A subject's own colours never appear on
    its own shape, and the UNet never sees any of these (its data stays one colour).
    """
    kind = rng.choice(("halves", "disc", "rings", "quadrants"))
    while True:
        colors = tuple(rng.sample(COLORS, 3 if kind == "rings" else 2))
        if not _is_subject_look(shape, colors):
            break
    angle = rng.uniform(0.0, 2 * np.pi)
    if kind == "halves":
        pattern = _rotated(_halves(colors[0], colors[1]), angle)
    elif kind == "quadrants":
        pattern = _rotated(_quadrants(colors[0], colors[1]), angle)
    elif kind == "disc":
        pattern = _disc(colors[0], colors[1], rng.uniform(0.3, 0.6), dy=rng.uniform(-0.2, 0.2))
    else:
        r1 = rng.uniform(0.25, 0.45)
        pattern = _rings(colors[0], colors[1], colors[2], r1, r1 + rng.uniform(0.2, 0.35))
    return pattern, colors
