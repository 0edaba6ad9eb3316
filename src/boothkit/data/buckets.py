"""Aspect-ratio bucketing: train portrait and landscape photos near their own shape, not square crops.

A square centre crop of a 9:16 phone photo throws away almost half of it. Buckets are a fixed set
of (width, height) training sizes with about the same pixel count as resolution x resolution (so
memory and step time stay flat) and different aspect ratios; each image goes to the bucket whose
shape is closest to its own. Pure functions, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from boothkit.errors import BoothkitError

# A bucket may hold this much less than resolution**2 pixels. Dropping the requirement would let
# the extreme ratios in, but at a lower effective resolution than the rest of the set.
MIN_FILL = 0.85


def default_step(resolution: int) -> int:
    """64 (the latent stride of SD UNets times the VAE factor), 8 for tiny test resolutions.

    Falls back to the largest of 32, 16, 8 that divides `resolution`, so (resolution, resolution)
    is always a bucket.
    """
    preferred = 64 if resolution >= 256 else 8
    for step in (preferred, 32, 16, 8):
        if step <= preferred and resolution % step == 0:
            return step
    raise BoothkitError(f"resolution {resolution} must be a multiple of 8", hint="use e.g. 512, 768 or 1024")


def make_buckets(
    resolution: int, *, step: int | None = None, max_aspect: float = 2.0
) -> list[tuple[int, int]]:
    """(width, height) pairs, sorted from tallest to widest, always including (resolution, resolution).

    Each side is a multiple of `step` (default: default_step), each bucket holds at most
    resolution**2 and at least MIN_FILL of it, and aspect ratios lie within [1/max_aspect,
    max_aspect]. For every width, the tallest height that fits is taken; the set is mirrored so
    portrait and landscape get the same shapes. At small resolutions with a coarse step the extreme
    ratios may not reach max_aspect within MIN_FILL (at 512 with step 64 the widest is 640x384).
    """
    if resolution <= 0:
        raise BoothkitError(f"resolution must be positive, got {resolution}")
    if max_aspect < 1:
        raise BoothkitError(f"max_aspect must be at least 1, got {max_aspect}")
    step = default_step(resolution) if step is None else step
    if step <= 0 or resolution % step:
        raise BoothkitError(f"resolution {resolution} must be a multiple of the bucket step {step}")
    area = resolution * resolution
    found: set[tuple[int, int]] = set()
    for width in range(step, math.floor(resolution * math.sqrt(max_aspect)) + 1, step):
        height = area // width // step * step
        if height < step or width * height < MIN_FILL * area:
            continue
        if 1 / max_aspect - 1e-9 <= width / height <= max_aspect + 1e-9:
            found.update({(width, height), (height, width)})
    kept = [b for b in found if not any(o != b and o[0] >= b[0] and o[1] >= b[1] for o in found)]
    return sorted(kept, key=lambda b: b[0] / b[1])


def assign_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to width/height in log space.

    Log space makes 1:2 and 2:1 equally far from square. Ties go to the bucket with more pixels.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not buckets:
        raise ValueError("no buckets to choose from")
    target = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - target), -b[0] * b[1], b))
