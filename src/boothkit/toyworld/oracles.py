"""Measure an image against the toy world's ground truth: what is drawn, where, on what, and whose.

The oracles are procedural and know the renderer's design rather than being trained on it:

* every background mixes two known tones, so its colours lie on one RGB segment, and every
  object colour is far from every such segment. The background is the one whose segment explains
  the image's border best; the object is what lies nearer an object colour than that segment.
* the object's outline, normalised by its centroid and area (so position and size drop out), is
  compared with outline templates of every shape at a few rotations;
* a subject is recognised by the colour of each of its painted regions, looked up at the same
  normalised coordinates in the image, and by the contrast between neighbouring regions (which
  survives blur better than the colours themselves).

They are meant for generated images too, which are blurry, noisy, colour-shifted renders: every
decision is a nearest-match or a median over many pixels, never an exact comparison.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageFilter

from boothkit.toyworld.render import (
    BACKGROUND_TONES,
    MAX_ROTATION_DEG,
    OBJECT_RGB,
    POSITION_CENTERS,
    SIZE_RADIUS,
    Placement,
    coverage,
    render_pattern,
    solid,
)
from boothkit.toyworld.scene import BACKGROUNDS, COLORS, SHAPES, SIZES, Scene
from boothkit.toyworld.subjects import Subject

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

# Normalised grid the outline is compared on: GRID x GRID points spanning the centroid +- HALF_SPAN
# times sqrt(object area); every shape fits inside that span.
GRID = 24
HALF_SPAN = 1.0
TEMPLATE_ROTATIONS_DEG = tuple(np.linspace(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, 5))
TEMPLATE_SIZE = 96
TEMPLATE_RADIUS = 0.4
MIN_OBJECT_PIXELS = 4
# Ordinary class members score at most ~0.4 even blurred and noisy, subjects at least ~0.8.
SUBJECT_THRESHOLD = 0.6
# How far (RGB units) every blend of two object colours must stay from every background's colours
# for a blurred seam between them to still read as object.
MIN_BLEND_CLEARANCE = 60.0

_OBJ = np.array([OBJECT_RGB[c] for c in COLORS], dtype=np.float64)
_BG_A = np.array([BACKGROUND_TONES[b][0] for b in BACKGROUNDS], dtype=np.float64)
_BG_B = np.array([BACKGROUND_TONES[b][1] for b in BACKGROUNDS], dtype=np.float64)


@dataclass(frozen=True)
class Measurement:
    """Best guesses for one image; the object fields are None when no object was found."""

    shape: str | None
    color: str | None
    size: str | None
    position: str | None
    background: str

    @property
    def found(self) -> bool:
        """Whether an object was found at all (a generated image may show none)."""
        return self.shape is not None

    def agrees(self, scene: Scene) -> dict[str, bool]:
        """Which of the scene's attributes this measurement got right (colour only if the scene has one)."""
        result = {
            "shape": self.shape == scene.shape,
            "size": self.size == scene.size,
            "position": self.position == scene.position,
            "background": self.background == scene.background,
        }
        if scene.color is not None:
            result["color"] = self.color == scene.color
        return result


@dataclass(frozen=True)
class _Segmentation:
    """What every oracle starts from: the pixels, the background, and where the object is."""

    pixels: FloatArray  # (H, W, 3) float RGB
    background: str
    alpha: FloatArray  # (H, W) how object-like each pixel is, 0..1
    mask: BoolArray  # (H, W) the object's pixels: one connected blob


def measure(image: Image.Image) -> Measurement:
    """Shape, colour, size, position and background of the one object in ``image``."""
    seg = _segment(image)
    if int(seg.mask.sum()) < MIN_OBJECT_PIXELS:
        return Measurement(None, None, None, None, seg.background)
    shape = _classify_shape(seg)
    return Measurement(
        shape=shape,
        color=_nearest_color(_median_color(seg)),
        size=_classify_size(seg, shape),
        position=_classify_position(seg),
        background=seg.background,
    )


def subject_score(image: Image.Image, subject: Subject) -> float:
    """How clearly the object shows the subject's colour layout, 0..1 (0 if not of its class).

    Half of it is whether each of the subject's colour regions shows its own named colour there;
    half is whether neighbouring regions differ the way the subject's colours do. An ordinary
    class member is one colour, so it gets at most one region's worth of the first half and
    nothing of the second; blur washes out absolute colours of a small subject but keeps much of
    the contrast between its regions.
    """
    seg = _segment(image)
    if int(seg.mask.sum()) < MIN_OBJECT_PIXELS or _classify_shape(seg) != subject.shape:
        return 0.0
    rows, cols = _grid_points(seg.mask)
    colors = _sample_grid(seg.pixels, rows, cols)
    # Only cells the image shows as clearly object: thin parts (a star's points) blend with the
    # background at their edges, and such blends can sit nearer another object colour.
    inside = _sample_grid(seg.alpha[..., None], rows, cols)[..., 0] > 0.9
    scores = []
    for labels in _subject_templates(subject):
        medians = _region_medians(colors, inside, labels)
        scores.append(0.5 * _colour_match(medians, subject) + 0.5 * _colour_contrast(medians, subject))
    return max(scores)


def is_subject(image: Image.Image, subject: Subject, threshold: float = SUBJECT_THRESHOLD) -> bool:
    """Whether the object is ``subject`` itself rather than an ordinary member of its class."""
    return subject_score(image, subject) >= threshold


def colour_histogram(image: Image.Image) -> dict[str, float]:
    """Share of the object's interior pixels nearest each named colour (sums to 1; all 0 if no object).

    Averaged over many images of one class, this is the class's colour distribution, whose drift
    after fine-tuning shows whether the subject's look leaked into the class prior.
    """
    seg = _segment(image)
    counts = np.zeros(len(COLORS))
    if seg.mask.any():
        nearest = _object_distances(seg.pixels[_core(seg.mask)]).argmin(axis=1)
        counts = np.bincount(nearest, minlength=len(COLORS)) / nearest.size
    return {c: float(v) for c, v in zip(COLORS, counts, strict=True)}


def colour_distribution(images: Iterable[Image.Image]) -> dict[str, float]:
    """Share of images whose object measures as each colour; images without an object are skipped."""
    counts = dict.fromkeys(COLORS, 0)
    for image in images:
        color = measure(image).color
        if color is not None:
            counts[color] += 1
    total = sum(counts.values())
    return {c: (n / total if total else 0.0) for c, n in counts.items()}


def colour_drift(before: Mapping[str, float], after: Mapping[str, float]) -> float:
    """Total-variation distance between two colour distributions: 0 unchanged, 1 disjoint."""
    keys = set(before) | set(after)
    return 0.5 * sum(abs(before.get(k, 0.0) - after.get(k, 0.0)) for k in keys)


# --- segmentation -------------------------------------------------------------------------------


def _segment(image: Image.Image) -> _Segmentation:
    """Find the background first (from the border), then the object against it, then re-check."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    h, w, _ = pixels.shape
    border = max(2, round(0.04 * min(h, w)))
    ring = np.ones((h, w), dtype=bool)
    ring[border:-border, border:-border] = False
    background = _best_background(pixels[ring])
    alpha, mask = _object_mask(pixels, background)
    # The border can be crossed by the object; everything outside the object is better evidence.
    outside = ~_dilate(mask, 2)
    if outside.sum() > ring.sum():
        better = _best_background(pixels[outside][::2])  # every other pixel is plenty
        if better != background:
            background = better
            alpha, mask = _object_mask(pixels, background)
    return _Segmentation(pixels, background, alpha, mask)


def _best_background(samples: FloatArray) -> str:
    """The background whose tone segment lies closest to most of ``samples`` (N, 3)."""
    scores = np.median(_background_distances(samples), axis=0)
    return BACKGROUNDS[int(scores.argmin())]


def _background_distances(samples: FloatArray) -> FloatArray:
    """(N, n_backgrounds) distance of each sample to each background's tone segment."""
    return _segment_distances(samples, _BG_A, _BG_B)


def _segment_distances(samples: FloatArray, starts: FloatArray, ends: FloatArray) -> FloatArray:
    """(N, K) distance of each sample (N, 3) to each RGB segment starts[k]..ends[k]."""
    d = ends - starts  # (K, 3)
    length2 = np.maximum((d * d).sum(axis=1), 1e-9)
    rel = samples[:, None, :] - starts[None]  # (N, K, 3)
    t = np.clip((rel * d[None]).sum(axis=2) / length2, 0.0, 1.0)
    return np.asarray(np.linalg.norm(rel - t[..., None] * d[None], axis=2))


def _object_distances(samples: FloatArray) -> FloatArray:
    """(N, n_colours) distance of each sample to each object colour."""
    return np.asarray(np.linalg.norm(samples[:, None, :] - _OBJ[None], axis=2))


def _objectness_distances(samples: FloatArray) -> FloatArray:
    """(N,) distance to the nearest object colour or blend of two blendable object colours."""
    nearest = _object_distances(samples).min(axis=1)
    starts, ends = _blend_segments()
    blends = _segment_distances(samples, starts, ends).min(axis=1)
    return np.asarray(np.minimum(nearest, blends))


@cache
def blendable_pairs() -> frozenset[frozenset[str]]:
    """Pairs of object colours whose every blend stays far from every background's colours.

    A blurred seam between such a pair still reads as object. A subject's colours that meet at
    its outline must be such a pair: others (blue and yellow blend to gray) would cut the subject
    in two on some background. Seams enclosed by the subject are filled in regardless.
    """
    pairs = set()
    for i, a in enumerate(COLORS):
        for b in COLORS[i + 1 :]:
            start, end = _OBJ[i], _OBJ[COLORS.index(b)]
            blends = start + np.linspace(0, 1, 33)[:, None] * (end - start)
            if _background_distances(blends).min() >= MIN_BLEND_CLEARANCE:
                pairs.add(frozenset((a, b)))
    return frozenset(pairs)


@cache
def _blend_segments() -> tuple[FloatArray, FloatArray]:
    pairs = [sorted(p, key=COLORS.index) for p in blendable_pairs()]
    starts = np.array([OBJECT_RGB[a] for a, _ in pairs], dtype=np.float64).reshape(-1, 3)
    ends = np.array([OBJECT_RGB[b] for _, b in pairs], dtype=np.float64).reshape(-1, 3)
    return starts, ends


def _object_mask(pixels: FloatArray, background: str) -> tuple[FloatArray, BoolArray]:
    """Object-likeness of every pixel and the largest blob of object-like pixels.

    A pixel is object-like when it is nearer an object colour, or a blend of two blendable ones
    (a blurred seam inside a subject), than the background's tone segment.
    For a pixel blending object and background, d_bg / (d_bg + d_obj) is the object's share of
    the blend, so 0.5 is the object's anti-aliased edge.
    """
    h, w, _ = pixels.shape
    flat = pixels.reshape(-1, 3)
    k = BACKGROUNDS.index(background)
    d_bg = _segment_distances(flat, _BG_A[k : k + 1], _BG_B[k : k + 1])[:, 0]
    d_obj = _objectness_distances(flat)
    share = (d_bg / (d_bg + d_obj + 1e-9)).reshape(h, w)
    # Noise alone leaves a background pixel a small share; clip that floor away.
    alpha = np.clip((share - 0.25) / 0.5, 0.0, 1.0)
    mask = _majority3(share > 0.5)
    # Fill first: a subject's outer ring and its inside can be separated by a seam.
    mask = _largest_component(_fill_holes(mask))
    return np.where(mask, np.maximum(alpha, 0.5), alpha), mask


def _majority3(mask: BoolArray) -> BoolArray:
    """3x3 majority filter: removes single-pixel specks and fills single-pixel holes."""
    padded = np.pad(mask.astype(np.int32), 1)
    h, w = mask.shape
    total = sum(padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3))
    return np.asarray(total >= 5)


def _dilate(mask: BoolArray, steps: int) -> BoolArray:
    out = mask.copy()
    for _ in range(steps):
        padded = np.pad(out, 1)
        out = padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    return out


def _erode(mask: BoolArray) -> BoolArray:
    return ~_dilate(~mask, 1)


def _components(mask: BoolArray) -> tuple[NDArray[np.int32], list[int]]:
    """4-connected component labels (0 = not in mask, k = k-th blob) and each blob's size."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    h, w = mask.shape
    sizes: list[int] = []
    for start in zip(*np.nonzero(mask), strict=True):
        if labels[start]:
            continue
        label = len(sizes) + 1
        labels[start] = label
        stack, size = [start], 0
        while stack:
            r, c = stack.pop()
            size += 1
            for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= nr < h and 0 <= nc < w and mask[nr, nc] and not labels[nr, nc]:
                    labels[nr, nc] = label
                    stack.append((nr, nc))
        sizes.append(size)
    return labels, sizes


def _largest_component(mask: BoolArray) -> BoolArray:
    """The largest blob: a generated image may have stray specks besides the object."""
    labels, sizes = _components(mask)
    if not sizes:
        return np.zeros_like(mask)
    return np.asarray(labels == int(np.argmax(sizes)) + 1)


def _fill_holes(mask: BoolArray) -> BoolArray:
    """The mask with every enclosed hole filled: all that the background outside cannot reach.

    Inside a multi-coloured subject, a blurred seam between two of its colours can look more like
    background than like any object colour; it is still object.
    """
    free = ~mask
    reach = np.zeros_like(mask)
    for edge in (np.s_[0, :], np.s_[-1, :], np.s_[:, 0], np.s_[:, -1]):
        reach[edge] = free[edge]
    while True:
        grown = _dilate(reach, 4) & free
        if np.array_equal(grown, reach):
            return np.asarray(~reach)
        reach = grown


# --- attributes ---------------------------------------------------------------------------------


def _core(mask: BoolArray) -> BoolArray:
    """The object's interior, where its colour is not blended with the background's (if any is left)."""
    core = _erode(mask)
    return core if core.sum() >= MIN_OBJECT_PIXELS else mask


def _median_color(seg: _Segmentation) -> FloatArray:
    return np.asarray(np.median(seg.pixels[_core(seg.mask)], axis=0))


def _nearest_color(rgb: FloatArray) -> str:
    return COLORS[int(_object_distances(rgb[None])[0].argmin())]


def _centroid_and_scale(mask: BoolArray) -> tuple[float, float, float]:
    """Centroid (row, col) in pixels and sqrt(area), the object's size-independent yardstick."""
    rows, cols = np.nonzero(mask)
    return float(rows.mean()) + 0.5, float(cols.mean()) + 0.5, math.sqrt(rows.size)


def _classify_position(seg: _Segmentation) -> str:
    h, w = seg.mask.shape
    row, col = _centroid_and_scale(seg.mask)[:2]
    x, y = col / w, row / h
    return min(
        POSITION_CENTERS, key=lambda p: (POSITION_CENTERS[p][0] - x) ** 2 + (POSITION_CENTERS[p][1] - y) ** 2
    )


def _classify_size(seg: _Segmentation, shape: str) -> str:
    """Radius from area (via the shape's area per squared radius) against the sizes' geometric mean."""
    h, w = seg.mask.shape
    radius = math.sqrt(seg.mask.sum() / _unit_areas()[shape]) / math.sqrt(h * w)
    small, large = SIZE_RADIUS["small"], SIZE_RADIUS["large"]
    return "small" if radius < math.sqrt(small * large) else "large"


def _classify_shape(seg: _Segmentation) -> str:
    """The shape whose normalised outline template is nearest the object's, over template rotations."""
    outline = _sample_grid(seg.alpha[..., None], *_grid_points(seg.mask))[..., 0]
    templates = _shape_templates()
    errors = ((templates - outline[None]) ** 2).sum(axis=(2, 3)).min(axis=1)
    return SHAPES[int(errors.argmin())]


def _grid_points(mask: BoolArray) -> tuple[FloatArray, FloatArray]:
    """Pixel coordinates (rows, cols) of the normalised GRID x GRID sampling grid around the object."""
    row, col, scale = _centroid_and_scale(mask)
    offsets = (np.arange(GRID) + 0.5) / GRID * 2 - 1
    rows = row + HALF_SPAN * scale * offsets[:, None] * np.ones(GRID)[None]
    cols = col + HALF_SPAN * scale * offsets[None, :] * np.ones(GRID)[:, None]
    return rows, cols


def _sample_grid(values: FloatArray, rows: FloatArray, cols: FloatArray) -> FloatArray:
    """Bilinear samples of (H, W, C) ``values`` at fractional pixel coordinates; zero outside."""
    h, w, c = values.shape
    padded = np.zeros((h + 2, w + 2, c))
    padded[1:-1, 1:-1] = values
    # Pixel centres sit at +0.5; shift by the padding and clamp into the padded frame.
    r = np.clip(rows - 0.5 + 1, 0, h + 1 - 1e-6)
    q = np.clip(cols - 0.5 + 1, 0, w + 1 - 1e-6)
    r0, q0 = np.floor(r).astype(np.intp), np.floor(q).astype(np.intp)
    r1, q1 = np.minimum(r0 + 1, h + 1), np.minimum(q0 + 1, w + 1)
    fr, fq = (r - r0)[..., None], (q - q0)[..., None]
    top = padded[r0, q0] * (1 - fq) + padded[r0, q1] * fq
    bottom = padded[r1, q0] * (1 - fq) + padded[r1, q1] * fq
    return np.asarray(top * (1 - fr) + bottom * fr)


@cache
def _template_placements() -> tuple[Placement, ...]:
    return tuple(Placement(0.5, 0.5, TEMPLATE_RADIUS, math.radians(deg)) for deg in TEMPLATE_ROTATIONS_DEG)


@cache
def _shape_templates() -> FloatArray:
    """(n_shapes, n_variants, GRID, GRID) normalised outlines of every shape.

    Variants are rotations of a large anti-aliased render plus, per rotation, both sizes rendered
    at 64 pixels and blurred: a small blurred star has rounded tips, and it should match a star
    template, not look like a circle next to a crisp one.
    """
    variants = []
    for shape in SHAPES:
        per_shape = []
        for place in _template_placements():
            cov = coverage(shape, place, TEMPLATE_SIZE)
            per_shape.append(_sample_grid(cov[..., None], *_grid_points(cov > 0.5))[..., 0])
            for size in SIZES:
                scene = Scene(shape, "white", size, "center", "gray")
                small_place = Placement(0.5, 0.5, SIZE_RADIUS[size], place.rotation)
                image = render_pattern(scene, solid("white"), 64, place=small_place)
                seg = _segment(image.filter(ImageFilter.GaussianBlur(1)))
                per_shape.append(_sample_grid(seg.alpha[..., None], *_grid_points(seg.mask))[..., 0])
        variants.append(per_shape)
    return np.asarray(variants)


@cache
def _unit_areas() -> dict[str, float]:
    """Area of each shape in units of its squared radius, measured on its template render."""
    place = _template_placements()[len(TEMPLATE_ROTATIONS_DEG) // 2]
    pixels_per_radius = TEMPLATE_RADIUS * TEMPLATE_SIZE
    return {s: float(coverage(s, place, TEMPLATE_SIZE).sum()) / pixels_per_radius**2 for s in SHAPES}


# --- subjects -----------------------------------------------------------------------------------


@cache
def _subject_templates(subject: Subject) -> tuple[NDArray[np.intp], ...]:
    """Per template rotation, a GRID x GRID map of the subject's colour index there (-1 = ignore).

    Cells on the outline or on a boundary between two colours are ignored: blur mixes them.
    """
    out = []
    for place in _template_placements():
        scene = Scene(subject.shape, None, "large", "center", "gray")
        image = render_pattern(scene, subject.pattern, TEMPLATE_SIZE, place=place)
        pixels = np.asarray(image, dtype=np.float64)
        cov = coverage(subject.shape, place, TEMPLATE_SIZE)
        rows, cols = _grid_points(cov > 0.5)
        colors = _sample_grid(pixels, rows, cols)
        inside = _sample_grid(cov[..., None], rows, cols)[..., 0] > 0.99
        labels = np.where(
            inside, _object_distances(colors.reshape(-1, 3)).argmin(axis=1).reshape(GRID, GRID), -1
        )
        out.append(_drop_boundaries(labels))
    return tuple(out)


def _drop_boundaries(labels: NDArray[np.intp]) -> NDArray[np.intp]:
    """Mark cells next to a cell of another colour as -1 (cells next to the outline stay)."""
    padded = np.pad(labels, 1, constant_values=-1)
    h, w = labels.shape
    clash = np.zeros(labels.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        neighbour = padded[dy : dy + h, dx : dx + w]
        clash |= (neighbour >= 0) & (neighbour != labels)
    return np.where(clash, -1, labels)


def _region_medians(colors: FloatArray, inside: BoolArray, labels: NDArray[np.intp]) -> dict[str, FloatArray]:
    """Median image colour of each template colour region, over the cells clearly inside the object."""
    medians = {}
    for label in np.unique(labels[labels >= 0]):
        seen = (labels == label) & inside
        if seen.any():
            medians[COLORS[int(label)]] = np.median(colors[seen], axis=0)
    return medians


def _colour_match(medians: Mapping[str, FloatArray], subject: Subject) -> float:
    """Mean over the subject's regions of how decidedly each shows its own named colour.

    1 when the region's colour is clearly the expected one, 0 when clearly another or unseen, in
    between for blends: every region weighs the same.
    """
    total = 0.0
    for color in subject.colors:
        if color not in medians:
            continue
        distances = _object_distances(medians[color][None])[0]
        index = COLORS.index(color)
        expected, other = distances[index], np.delete(distances, index).min()
        total += float(np.clip(0.5 + (other - expected) / (other + expected + 1e-9), 0.0, 1.0))
    return total / len(subject.colors)


def _colour_contrast(medians: Mapping[str, FloatArray], subject: Subject) -> float:
    """Mean over neighbouring colour pairs of how far their regions differ in the subject's direction.

    The regions' colours are projected on the line from one subject colour to the other; a full
    step counts 1 and half a step (a blurred small subject) already counts 1 too.
    """
    pairs = list(itertools.pairwise(subject.colors))
    total = 0.0
    for first, second in pairs:
        if first not in medians or second not in medians:
            continue
        start, end = (np.asarray(OBJECT_RGB[c], dtype=np.float64) for c in (first, second))
        axis = end - start
        step = float((medians[second] - medians[first]) @ axis / (axis @ axis))
        total += float(np.clip(step / 0.5, 0.0, 1.0))
    return total / len(pairs) if pairs else 0.0
