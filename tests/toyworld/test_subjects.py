"""Subjects: unique looks no ordinary scene has, and their instance photos."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from boothkit.toyworld import (
    BENCH_SUBJECTS,
    COLORS,
    SHAPES,
    SUBJECTS,
    TEST_SUBJECTS,
    Scene,
    caption,
    instance_images,
    instance_scenes,
    placement,
    render,
    render_subject,
)
from boothkit.toyworld.oracles import blendable_pairs
from boothkit.toyworld.render import coverage
from boothkit.toyworld.subjects import INSTANCE_BACKGROUNDS


def test_subject_catalogue() -> None:
    assert 5 <= len(SUBJECTS) <= 6
    assert set(TEST_SUBJECTS) | set(BENCH_SUBJECTS) == set(SUBJECTS)
    assert not set(TEST_SUBJECTS) & set(BENCH_SUBJECTS)
    for name, subject in SUBJECTS.items():
        assert subject.name == name
        assert subject.shape in SHAPES
        assert len(subject.colors) >= 2 and set(subject.colors) <= set(COLORS)


def test_neighbouring_subject_colours_blend_without_looking_like_background() -> None:
    for subject in SUBJECTS.values():
        for pair in itertools.pairwise(subject.colors):
            assert frozenset(pair) in blendable_pairs(), (subject.name, pair)


@pytest.mark.parametrize("name", sorted(SUBJECTS))
def test_subject_looks_unlike_every_ordinary_member_of_its_class(name: str) -> None:
    # Same scene and seed, so only the object differs: at least a quarter of it must differ
    # strongly from the same object in any one colour (which is all sample_scene can make).
    subject = SUBJECTS[name]
    for i, background in enumerate(("gray", "grass", "brick")):
        scene = Scene(subject.shape, None, "large", "center", background)
        look = np.asarray(render_subject(subject, scene, seed=i), dtype=np.int32)
        inside = coverage(subject.shape, placement(scene, i), 64) > 0.99
        for color in COLORS:
            ordinary = np.asarray(render(Scene(subject.shape, color, "large", "center", background), seed=i))
            differs = np.abs(look - ordinary).sum(axis=2)[inside] > 90
            assert differs.mean() > 0.25, (name, color)


@pytest.mark.parametrize("n", [4, 5, 6])
@pytest.mark.parametrize("size", [32, 64])
def test_instance_images(n: int, size: int) -> None:
    subject = SUBJECTS[TEST_SUBJECTS[0]]
    images = instance_images(subject, n=n, size=size)
    assert len(images) == n
    assert all(im.size == (size, size) and im.mode == "RGB" for im in images)
    again = instance_images(subject, n=n, size=size)
    assert [im.tobytes() for im in images] == [im.tobytes() for im in again]


def test_instance_scenes_are_plain_and_varied() -> None:
    for subject in SUBJECTS.values():
        scenes = instance_scenes(subject, n=6)
        assert all(s.shape == subject.shape and s.color is None for s in scenes)
        assert {s.background for s in scenes} == set(INSTANCE_BACKGROUNDS)
        assert len({s.position for s in scenes}) == 6
        assert {s.size for s in scenes} == {"small", "large"}
        assert all(caption(s, subject_token="sks").startswith("a photo of a") for s in scenes)
    with pytest.raises(ValueError):
        instance_scenes(SUBJECTS[TEST_SUBJECTS[0]], n=0)


def test_render_subject_is_deterministic_and_checks_its_class() -> None:
    subject = SUBJECTS[TEST_SUBJECTS[0]]
    scene = Scene(subject.shape, None, "small", "top right", "water")
    assert (
        render_subject(subject, scene, seed=2).tobytes() == render_subject(subject, scene, seed=2).tobytes()
    )
    other_shape = next(s for s in SHAPES if s != subject.shape)
    with pytest.raises(ValueError, match=subject.shape):
        render_subject(subject, Scene(other_shape, None, "small", "top", "gray"))
