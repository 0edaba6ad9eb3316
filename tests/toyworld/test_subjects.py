"""Subjects: unique looks no ordinary scene has, and their instance photos."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

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
from boothkit.toyworld.render import OBJECT_RGB, coverage
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


def test_multicolor_paints_are_never_a_subjects_look_and_are_seeded() -> None:
    import random

    from boothkit.toyworld.subjects import multicolor_paint

    looks = {(s.shape, frozenset(s.colors)) for s in SUBJECTS.values()}
    rng = random.Random(0)
    seen_kinds = set()
    for i in range(600):
        shape = SHAPES[i % len(SHAPES)]
        _, colors = multicolor_paint(rng, shape)
        assert len(set(colors)) == len(colors) >= 2 and set(colors) <= set(COLORS)
        assert (shape, frozenset(colors)) not in looks
        seen_kinds.add(len(colors))
    assert seen_kinds == {2, 3}  # two-colour splits and emblems, three-colour rings
    # The subjects' own colours do occur, on other shapes: the decoder learns colours, not subjects.
    first = SUBJECTS[BENCH_SUBJECTS[0]]
    assert any(set(multicolor_paint(random.Random(k), "circle")[1]) == set(first.colors) for k in range(2000))
    x, y = np.meshgrid(np.linspace(-1, 1, 9), np.linspace(-1, 1, 9))
    a = multicolor_paint(random.Random(5), "star")[0](x.ravel(), y.ravel())
    b = multicolor_paint(random.Random(5), "star")[0](x.ravel(), y.ravel())
    assert np.array_equal(a, b)


def test_decoder_batches_paint_the_asked_share_in_several_colours() -> None:
    import random

    from boothkit.toyworld.captions import training_scene
    from boothkit.toyworld.model import RESOLUTION
    from boothkit.toyworld.pretrain import render_batch_with_masks

    # Share 0 is the one-colour world, render for render.
    images, masks = render_batch_with_masks(random.Random(3), 4)
    rng = random.Random(3)
    for image, mask in zip(images, masks, strict=True):
        scene, seed = training_scene(rng), rng.randrange(1 << 30)
        assert np.array_equal(np.asarray(image), np.asarray(render(scene, size=RESOLUTION, seed=seed)))
        assert np.allclose(mask[0].numpy(), coverage(scene.shape, placement(scene, seed), RESOLUTION))

    def colours_inside(image: Image.Image, mask: np.ndarray) -> int:
        pixels = np.asarray(image, dtype=np.int32)[mask > 0.99]
        palette = np.asarray(list(OBJECT_RGB.values()))
        nearest = np.abs(pixels[:, None] - palette[None]).sum(axis=2)
        return len({int(k) for k, d in zip(nearest.argmin(1), nearest.min(1), strict=True) if d < 30})

    images, masks = render_batch_with_masks(random.Random(4), 24, multicolor_share=1.0)
    counts = [colours_inside(im, m[0].numpy()) for im, m in zip(images, masks, strict=True)]
    assert sum(c >= 2 for c in counts) >= 20, counts
    images, masks = render_batch_with_masks(random.Random(4), 24, multicolor_share=0.0)
    assert all(colours_inside(im, m[0].numpy()) <= 1 for im, m in zip(images, masks, strict=True))
