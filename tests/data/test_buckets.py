"""Aspect-ratio buckets: right shape for each photo, constant pixel budget, latent-friendly sides."""

from __future__ import annotations

import math

import pytest

from boothkit.data.buckets import MIN_FILL, assign_bucket, default_step, make_buckets
from boothkit.errors import BoothkitError

PHOTO_SIZES = [(3000, 4000), (4000, 3000), (1080, 1920), (1920, 1080), (500, 500), (1000, 1700), (1700, 1000)]


def ratio(size: tuple[int, int]) -> float:
    return size[0] / size[1]


@pytest.mark.parametrize(
    ("resolution", "step"), [(64, None), (128, None), (512, None), (768, None), (1024, None), (512, 32)]
)
def test_buckets_are_multiples_of_step_with_about_the_same_pixels(resolution: int, step: int | None) -> None:
    buckets = make_buckets(resolution, step=step)
    step = step or default_step(resolution)
    assert (resolution, resolution) in buckets
    assert len(set(buckets)) == len(buckets)
    for width, height in buckets:
        assert width % step == 0 and height % step == 0
        assert MIN_FILL * resolution**2 <= width * height <= resolution**2
        assert 1 / 2 <= width / height <= 2
        assert (height, width) in buckets  # portrait and landscape get the same shapes
    assert [ratio(b) for b in buckets] == sorted(ratio(b) for b in buckets)


@pytest.mark.parametrize("resolution", [512, 1024])
@pytest.mark.parametrize("size", PHOTO_SIZES)
def test_photos_go_to_a_bucket_of_their_own_shape(resolution: int, size: tuple[int, int]) -> None:
    bucket = assign_bucket(*size, make_buckets(resolution))
    assert abs(ratio(bucket) / ratio(size) - 1) <= 0.10, bucket


@pytest.mark.parametrize(("resolution", "step"), [(1024, None), (512, 32), (128, None)])
def test_every_ratio_up_to_max_aspect_has_a_bucket_within_ten_percent(
    resolution: int, step: int | None
) -> None:
    buckets = make_buckets(resolution, step=step)
    for i in range(-40, 41):
        image_ratio = math.exp(i / 40 * math.log(2))  # 1:2 ... 2:1
        bucket = assign_bucket(round(1000 * image_ratio), 1000, buckets)
        assert abs(ratio(bucket) / image_ratio - 1) <= 0.10, (image_ratio, bucket)


def test_extreme_photos_get_the_most_extreme_bucket() -> None:
    buckets = make_buckets(1024)
    assert assign_bucket(100, 1000, buckets) == min(buckets, key=ratio)
    assert assign_bucket(1000, 100, buckets) == max(buckets, key=ratio)
    assert assign_bucket(7, 7, buckets) == (1024, 1024)


def test_max_aspect_bounds_the_set() -> None:
    square_only = make_buckets(512, max_aspect=1.0)
    assert square_only == [(512, 512)]
    wide = make_buckets(1024, max_aspect=3.0)
    assert max(ratio(b) for b in wide) > 2.0 and all(ratio(b) <= 3.0 for b in wide)


def test_default_step_and_bad_input() -> None:
    assert default_step(512) == 64 and default_step(128) == 8 and default_step(720) == 16
    with pytest.raises(BoothkitError, match="multiple"):
        make_buckets(500, step=64)
    with pytest.raises(BoothkitError, match="multiple of 8"):
        make_buckets(500)
    with pytest.raises(BoothkitError):
        make_buckets(0)
    with pytest.raises(ValueError):
        assign_bucket(0, 10, [(64, 64)])
    with pytest.raises(ValueError):
        assign_bucket(10, 10, [])


def test_buckets_keep_the_multiple_a_models_latents_need(tmp_path) -> None:
    """Flux packs 2x2 latent tokens, so its sides are multiples of 16 even where 8 would do for SD."""
    from PIL import Image

    from boothkit.data.order import bucket_sizes

    paths = []
    for i, size in enumerate([(300, 200), (200, 300), (250, 170)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", size).save(paths[-1])
    sd = bucket_sizes(paths, 240, (255, 255, 255))
    flux = bucket_sizes(paths, 240, (255, 255, 255), multiple=16)
    assert any(w % 16 or h % 16 for w, h in sd)  # 8 is SD's step at this size
    assert all(w % 16 == 0 and h % 16 == 0 for w, h in flux)
    assert [w > h for w, h in flux] == [w > h for w, h in sd]
