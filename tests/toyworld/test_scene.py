"""Scenes, captions and their parsing: every caption must parse back to exactly its scene."""

from __future__ import annotations

import random

import pytest

from boothkit.toyworld import (
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    caption,
    class_prompt,
    parse_caption,
    parse_subject_token,
    sample_scene,
    subject_prompt,
    vocabulary,
)


def _scenes(n: int, seed: int) -> list[Scene]:
    rng = random.Random(seed)
    return [sample_scene(rng) for _ in range(n)]


def test_caption_round_trip_over_sampled_scenes() -> None:
    for scene in _scenes(500, seed=1):
        text = caption(scene)
        assert parse_caption(text) == scene, text
        assert parse_subject_token(text) is None


def test_subject_caption_replaces_colour_and_keeps_class_noun() -> None:
    scene = Scene("star", None, "small", "top left", "striped")
    text = caption(scene, subject_token="sks")
    assert text == "a photo of a small sks star in the top left on a striped background"
    assert parse_caption(text) == scene
    assert parse_subject_token(text) == "sks"
    # A coloured scene captioned with a token drops its colour.
    coloured = Scene("heart", "red", "large", "center", "gray")
    assert parse_caption(caption(coloured, subject_token="zwx")) == Scene(
        "heart", None, "large", "center", "gray"
    )


def test_caption_reads_naturally() -> None:
    scene = Scene("circle", "orange", "large", "left", "gray")
    assert caption(scene) == "a photo of a large orange circle on the left on a plain gray background"
    assert class_prompt("circle") == "a photo of a circle"
    assert subject_prompt("sks", "circle") == "a photo of a sks circle"


def test_vocabulary_covers_every_caption_word() -> None:
    vocab = set(vocabulary())
    assert vocabulary() == sorted(vocab)
    for scene in _scenes(300, seed=2):
        assert set(caption(scene).split()) <= vocab
    for shape in SHAPES:
        assert set(class_prompt(shape).split()) <= vocab
    assert set(SHAPES) | set(COLORS) | set(SIZES) <= vocab
    assert "sks" not in vocab


def test_sampling_is_deterministic_and_covers_every_value() -> None:
    assert _scenes(50, seed=3) == _scenes(50, seed=3)
    scenes = _scenes(2000, seed=4)
    assert {s.shape for s in scenes} == set(SHAPES)
    assert {s.color for s in scenes} == set(COLORS)
    assert {s.size for s in scenes} == set(SIZES)
    assert {s.position for s in scenes} == set(POSITIONS)
    assert {s.background for s in scenes} == set(BACKGROUNDS)
    assert all(s.color is not None for s in scenes)


@pytest.mark.parametrize(
    "fields",
    [
        ("hexagon", "red", "small", "top", "gray"),
        ("star", "pink", "small", "top", "gray"),
        ("star", "red", "medium", "top", "gray"),
        ("star", "red", "small", "middle", "gray"),
        ("star", "red", "small", "top", "lava"),
    ],
)
def test_unknown_attribute_is_rejected(fields: tuple[str, str, str, str, str]) -> None:
    with pytest.raises(ValueError, match="unknown"):
        Scene(*fields)


@pytest.mark.parametrize(
    "text",
    [
        "a photo of a red star",
        "a photo of a small red star in the middle on a striped background",
        "a photo of a small red star in the top left on a lava background",
        "a photo of a small red hexagon in the top left on a striped background",
    ],
)
def test_malformed_caption_is_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_caption(text)


def test_subject_token_must_be_outside_the_vocabulary() -> None:
    scene = Scene("star", None, "small", "top", "gray")
    for bad in ("red", "star", "two words", ""):
        with pytest.raises(ValueError):
            caption(scene, subject_token=bad)
    with pytest.raises(ValueError, match="subject_token"):
        caption(scene)
