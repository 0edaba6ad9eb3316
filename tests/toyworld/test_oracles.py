"""Oracle accuracy on fresh renders, clean and degraded the way a small diffusion model degrades them.

The seeds here were not used while the oracles were designed, so these are held-out accuracies.
"""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageFilter

from boothkit.toyworld import (
    BACKGROUNDS,
    COLORS,
    SUBJECTS,
    Scene,
    colour_distribution,
    colour_drift,
    colour_histogram,
    is_subject,
    measure,
    render,
    render_subject,
    sample_scene,
    subject_score,
)
from boothkit.toyworld.render import background_array

FIELDS = ("shape", "color", "size", "position", "background")


def degrade(image: Image.Image, seed: int) -> Image.Image:
    """Gaussian blur of radius 1 and Gaussian noise of sigma 8/255."""
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(1)), dtype=np.float64)
    noisy = blurred + np.random.default_rng(seed).normal(0.0, 8.0, blurred.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8))


def _accuracy(scenes: list[Scene], images: list[Image.Image]) -> dict[str, float]:
    hits: Counter[str] = Counter()
    for scene, image in zip(scenes, images, strict=True):
        hits.update(field for field, ok in measure(image).agrees(scene).items() if ok)
    return {field: hits[field] / len(scenes) for field in FIELDS}


@pytest.fixture(scope="module")
def fresh() -> tuple[list[Scene], list[Image.Image]]:
    rng = random.Random(777_001)
    scenes = [sample_scene(rng) for _ in range(300)]
    return scenes, [render(s, seed=rng.randrange(1 << 30)) for s in scenes]


@pytest.fixture(scope="module")
def subject_pairs() -> list[tuple[str, Image.Image, Image.Image]]:
    """200 images: 100 subjects and 100 ordinary members of the same class in the same scene."""
    rng = random.Random(777_002)
    names = sorted(SUBJECTS)
    pairs = []
    for i in range(100):
        subject = SUBJECTS[names[i % len(names)]]
        drawn = sample_scene(rng)
        scene = Scene(subject.shape, drawn.color, drawn.size, drawn.position, drawn.background)
        seed = rng.randrange(1 << 30)
        pairs.append((subject.name, render_subject(subject, scene, seed=seed), render(scene, seed=seed)))
    return pairs


def test_measure_is_accurate_on_clean_renders(fresh: tuple[list[Scene], list[Image.Image]]) -> None:
    accuracy = _accuracy(*fresh)
    assert min(accuracy.values()) >= 0.98, accuracy


def test_measure_is_robust_to_blur_and_noise(fresh: tuple[list[Scene], list[Image.Image]]) -> None:
    scenes, images = fresh
    accuracy = _accuracy(scenes, [degrade(im, i) for i, im in enumerate(images)])
    assert min(accuracy.values()) >= 0.90, accuracy


def test_subjects_are_told_from_ordinary_class_members(
    subject_pairs: list[tuple[str, Image.Image, Image.Image]],
) -> None:
    found = np.mean([is_subject(look, SUBJECTS[name]) for name, look, _ in subject_pairs])
    rejected = np.mean([not is_subject(ordinary, SUBJECTS[name]) for name, _, ordinary in subject_pairs])
    assert found >= 0.98 and rejected >= 0.98, (found, rejected)


def test_subject_oracle_is_robust_to_blur_and_noise(
    subject_pairs: list[tuple[str, Image.Image, Image.Image]],
) -> None:
    found = np.mean(
        [is_subject(degrade(look, i), SUBJECTS[n]) for i, (n, look, _) in enumerate(subject_pairs)]
    )
    rejected = np.mean(
        [
            not is_subject(degrade(ordinary, i), SUBJECTS[n])
            for i, (n, _, ordinary) in enumerate(subject_pairs)
        ]
    )
    assert found >= 0.90 and rejected >= 0.90, (found, rejected)


def test_subject_of_another_class_scores_zero() -> None:
    for subject in SUBJECTS.values():
        for other in SUBJECTS.values():
            if other.shape != subject.shape:
                scene = Scene(other.shape, None, "large", "center", "gray")
                assert subject_score(render_subject(other, scene), subject) == 0.0


def test_measure_works_at_other_sizes() -> None:
    rng = random.Random(777_003)
    for size, floor in ((128, 0.97), (32, 0.9)):
        scenes = [sample_scene(rng) for _ in range(40)]
        accuracy = _accuracy(scenes, [render(s, size, seed=i) for i, s in enumerate(scenes)])
        assert min(accuracy.values()) >= floor, (size, accuracy)


def test_empty_background_has_no_object() -> None:
    for background in BACKGROUNDS:
        pixels = background_array(Scene("circle", "red", "small", "center", background), 64, seed=1)
        result = measure(Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8)))
        assert not result.found and result.shape is None and result.color is None
        assert result.background == background


def test_colour_histogram_and_drift() -> None:
    for color in COLORS:
        image = render(Scene("square", color, "large", "center", "sand"), seed=4)
        histogram = colour_histogram(image)
        assert set(histogram) == set(COLORS)
        assert sum(histogram.values()) == pytest.approx(1.0)
        assert max(histogram, key=histogram.__getitem__) == color
        assert histogram[color] > 0.8

    reds = [render(Scene("star", "red", "large", p, "grass"), seed=1) for p in ("top", "left", "center")]
    blue = render(Scene("star", "blue", "large", "center", "grass"))
    before = colour_distribution(reds)
    after = colour_distribution([*reds[:2], blue])
    assert before["red"] == 1.0
    assert colour_drift(before, before) == 0.0
    assert colour_drift(before, after) == pytest.approx(1 / 3)
    assert colour_drift({"red": 1.0}, {"blue": 1.0}) == 1.0
