"""The renderer: deterministic bytes, objects kept inside the image, colour independent of placement."""

from __future__ import annotations

import random

import numpy as np
import pytest

from boothkit.toyworld import BACKGROUNDS, COLORS, POSITIONS, SHAPES, Scene, placement, render, sample_scene
from boothkit.toyworld.render import coverage


def _scenes(n: int, seed: int) -> list[Scene]:
    rng = random.Random(seed)
    return [sample_scene(rng) for _ in range(n)]


@pytest.mark.parametrize("size", [32, 64, 128])
def test_same_inputs_give_identical_bytes(size: int) -> None:
    for i, scene in enumerate(_scenes(8, seed=10)):
        first = render(scene, size, seed=i)
        assert first.mode == "RGB" and first.size == (size, size)
        assert render(scene, size, seed=i).tobytes() == first.tobytes()


def test_seed_jitters_the_image() -> None:
    scene = Scene("star", "red", "large", "center", "striped")
    images = {render(scene, seed=seed).tobytes() for seed in range(5)}
    assert len(images) > 1


def test_every_background_and_shape_renders_distinctly() -> None:
    backgrounds = {render(Scene("circle", "red", "small", "center", bg)).tobytes() for bg in BACKGROUNDS}
    shapes = {render(Scene(shape, "red", "large", "center", "gray")).tobytes() for shape in SHAPES}
    assert len(backgrounds) == len(BACKGROUNDS)
    assert len(shapes) == len(SHAPES)


def test_colour_changes_only_the_object() -> None:
    # Placement ignores colour, so the same scene in two colours differs only where the object is.
    base = Scene("heart", "red", "large", "bottom left", "brick")
    red = np.asarray(render(base, seed=3), dtype=np.int32)
    for color in COLORS[1:]:
        other = np.asarray(
            render(Scene("heart", color, "large", "bottom left", "brick"), seed=3), dtype=np.int32
        )
        changed = np.abs(red - other).sum(axis=2) > 0
        object_pixels = coverage("heart", placement(base, 3), 64) > 0
        assert changed.any()
        assert not (changed & ~object_pixels).any()


def test_objects_stay_inside_the_image() -> None:
    # The worst case: every shape, large, in every position, over many jitters.
    for shape in SHAPES:
        for position in POSITIONS:
            for seed in range(6):
                scene = Scene(shape, "red", "large", position, "gray")
                cover = coverage(shape, placement(scene, seed), 64)
                assert cover.sum() > 100
                border = np.concatenate([cover[0], cover[-1], cover[:, 0], cover[:, -1]])
                assert border.max() == 0.0, (shape, position, seed)


def test_small_and_large_differ_in_area() -> None:
    for shape in SHAPES:
        small = coverage(shape, placement(Scene(shape, "red", "small", "center", "gray"), 0), 64).sum()
        large = coverage(shape, placement(Scene(shape, "red", "large", "center", "gray"), 0), 64).sum()
        assert large > 2 * small


def test_scene_without_colour_needs_a_subject() -> None:
    with pytest.raises(ValueError, match="render_subject"):
        render(Scene("star", None, "small", "top", "gray"))
    with pytest.raises(ValueError, match="size"):
        render(Scene("star", "red", "small", "top", "gray"), size=4)
