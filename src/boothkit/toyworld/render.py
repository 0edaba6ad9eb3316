"""Deterministic renderer of toy-world scenes, numpy and Pillow only.

Everything is drawn analytically on a supersampled grid and box-filtered down, so edges are
anti-aliased the same way at 32, 64 or 128 pixels and a scene renders to identical bytes every
time. Geometry is in image-relative units: a scene looks the same at every size.

Object colours are chosen far from every background's colours (each background's texture only
mixes two tones, so its colours lie on one RGB segment). That separation is what lets the oracles
find the object by colour alone, also in blurred or noisy images.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from boothkit.toyworld.scene import Scene

FloatArray = NDArray[np.float64]
RGB = tuple[int, int, int]
# Colours of an object's surface at local coordinates (x, y), both (N,), in units of the object's
# radius, y pointing up, already un-rotated; returns (N, 3) RGB in 0..255.
Pattern = Callable[[FloatArray, FloatArray], FloatArray]

SUPERSAMPLE = 4

OBJECT_RGB: dict[str, RGB] = {
    "red": (220, 40, 40),
    "green": (40, 200, 90),
    "blue": (30, 60, 230),
    "yellow": (245, 215, 40),
    "purple": (140, 50, 185),
    "orange": (245, 135, 25),
    "white": (250, 250, 250),
    "black": (20, 20, 20),
}

# The two tones each background mixes; plain backgrounds have one tone twice.
BACKGROUND_TONES: dict[str, tuple[RGB, RGB]] = {
    "gray": ((100, 100, 100), (100, 100, 100)),
    "pink": ((225, 160, 185), (225, 160, 185)),
    "sky": ((115, 170, 225), (170, 205, 240)),
    "striped": ((175, 175, 160), (130, 130, 115)),
    "checkered": ((170, 215, 190), (125, 175, 150)),
    "dotted": ((45, 55, 100), (105, 120, 170)),
    "grass": ((50, 80, 30), (95, 130, 55)),
    "water": ((35, 105, 145), (80, 150, 185)),
    "sand": ((190, 165, 115), (225, 200, 150)),
    "brick": ((150, 80, 60), (80, 62, 55)),
}

# Centres of the 3x3 grid cells, as (x, y) fractions of the image; y points down.
_GRID = {"top": 0.21, "center": 0.5, "bottom": 0.79, "left": 0.21, "right": 0.79}
POSITION_CENTERS: dict[str, tuple[float, float]] = {
    "top left": (_GRID["left"], _GRID["top"]),
    "top": (0.5, _GRID["top"]),
    "top right": (_GRID["right"], _GRID["top"]),
    "left": (_GRID["left"], 0.5),
    "center": (0.5, 0.5),
    "right": (_GRID["right"], 0.5),
    "bottom left": (_GRID["left"], _GRID["bottom"]),
    "bottom": (0.5, _GRID["bottom"]),
    "bottom right": (_GRID["right"], _GRID["bottom"]),
}
# Radius of the circle every shape is inscribed in, as a fraction of the image side. Shapes are
# inscribed so that a rotation never pushes them out of the image: the largest, at a corner with
# full jitter, keeps a margin of 0.21 - 0.16 * 1.04 - 0.012 = 3.2% of the side (2 pixels at 64).
SIZE_RADIUS: dict[str, float] = {"small": 0.1, "large": 0.16}
MAX_ROTATION_DEG = 10.0
POSITION_JITTER = 0.012
RADIUS_JITTER = 0.04  # relative


@dataclass(frozen=True)
class Placement:
    """Where exactly an object lands: centre and radius as image fractions, rotation in radians."""

    cx: float
    cy: float
    radius: float
    rotation: float


def placement(scene: Scene, seed: int) -> Placement:
    """The seed's jitter of the scene's nominal position, size and orientation.

    The jitter depends on everything but the colour, so two scenes that differ only in colour
    (or an ordinary object and a subject in the same scene) land on the same pixels.
    """
    rng = _rng(scene, seed, stream=0)
    cx, cy = POSITION_CENTERS[scene.position]
    dx, dy = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2)
    scale = 1.0 + rng.uniform(-RADIUS_JITTER, RADIUS_JITTER)
    rotation = math.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    return Placement(cx + float(dx), cy + float(dy), SIZE_RADIUS[scene.size] * scale, rotation)


def _rng(scene: Scene, seed: int, stream: int) -> np.random.Generator:
    # crc32 rather than hash(): Python salts str hashes per process, which would break determinism.
    key = f"{scene.shape}|{scene.size}|{scene.position}|{scene.background}".encode()
    return np.random.default_rng([seed, zlib.crc32(key), stream])


def solid(color: str) -> Pattern:
    """The pattern of an ordinary object: one named colour all over."""
    rgb = np.asarray(OBJECT_RGB[color], dtype=np.float64)

    def paint(x: FloatArray, y: FloatArray) -> FloatArray:
        return np.broadcast_to(rgb, (x.shape[0], 3))

    return paint


def render(scene: Scene, size: int = 64, *, seed: int = 0) -> Image.Image:
    """The RGB image of an ordinary scene; identical bytes for the same (scene, size, seed)."""
    if scene.color is None:
        raise ValueError("scene has no colour; render subjects with render_subject")
    return render_pattern(scene, solid(scene.color), size, seed=seed)


def render_pattern(
    scene: Scene, pattern: Pattern, size: int = 64, *, seed: int = 0, place: Placement | None = None
) -> Image.Image:
    """Draw the scene's shape painted with ``pattern``; the scene's own colour is ignored.

    ``place`` overrides the seed's jitter with an exact pose (the oracles' templates need one).
    """
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    hi = size * SUPERSAMPLE
    canvas = background_array(scene, hi, seed=seed)
    if place is None:
        place = placement(scene, seed)
    rows, cols, inside, x, y = _object_pixels(scene.shape, place, hi)
    canvas[rows[inside], cols[inside]] = pattern(x[inside], y[inside])
    return Image.fromarray(_to_uint8(_downsample(canvas, SUPERSAMPLE)), mode="RGB")


def coverage(shape: str, place: Placement, size: int) -> FloatArray:
    """Fraction of each pixel the shape covers, (size, size) in 0..1; used to build oracle templates."""
    hi = size * SUPERSAMPLE
    mask = np.zeros((hi, hi), dtype=np.float64)
    rows, cols, inside, _, _ = _object_pixels(shape, place, hi)
    mask[rows[inside], cols[inside]] = 1.0
    return _downsample(mask[..., None], SUPERSAMPLE)[..., 0]


def _object_pixels(
    shape: str, place: Placement, hi: int
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.bool_], FloatArray, FloatArray]:
    """Pixel indices of the object's bounding box, which of them are inside, and their local coordinates.

    Only the bounding box is evaluated: the polygon test is the renderer's only costly step.
    """
    lo_c = max(0, int((place.cx - place.radius) * hi) - 1)
    hi_c = min(hi, int((place.cx + place.radius) * hi) + 2)
    lo_r = max(0, int((place.cy - place.radius) * hi) - 1)
    hi_r = min(hi, int((place.cy + place.radius) * hi) + 2)
    rr, cc = np.mgrid[lo_r:hi_r, lo_c:hi_c]
    rows, cols = rr.ravel(), cc.ravel()
    px = (cols + 0.5) / hi - place.cx
    py = place.cy - (rows + 0.5) / hi  # y up
    cos, sin = math.cos(place.rotation), math.sin(place.rotation)
    # Rotate the pixel back by the object's rotation to get object-local coordinates.
    x = (cos * px + sin * py) / place.radius
    y = (-sin * px + cos * py) / place.radius
    return rows, cols, inside_shape(shape, x, y), x, y


def inside_shape(shape: str, x: FloatArray, y: FloatArray) -> NDArray[np.bool_]:
    """Whether local points (unit = radius, y up) lie inside the shape inscribed in the unit circle."""
    if shape == "circle":
        return np.asarray(x * x + y * y <= 1.0)
    return _inside_polygon(x, y, shape_polygon(shape))


@cache
def shape_polygon(shape: str) -> FloatArray:
    """Vertices (K, 2) of a non-circular shape, inscribed in the unit circle, y up."""
    if shape == "square":
        s = 1 / math.sqrt(2)
        return np.array([[-s, -s], [s, -s], [s, s], [-s, s]])
    if shape == "diamond":
        # Narrower than a square turned 45 degrees, so it stays a diamond under small rotations.
        return np.array([[0.0, -1.0], [0.7, 0.0], [0.0, 1.0], [-0.7, 0.0]])
    if shape == "triangle":
        return _regular_polygon(3, 1.0)
    if shape == "star":
        outer = _regular_polygon(5, 1.0)
        inner = _regular_polygon(5, 0.42, phase=math.pi / 5)
        return np.stack([outer, inner], axis=1).reshape(-1, 2)
    if shape == "cross":
        w, a = 0.3, 0.95
        return np.array(
            [
                [-w, -a],
                [w, -a],
                [w, -w],
                [a, -w],
                [a, w],
                [w, w],
                [w, a],
                [-w, a],
                [-w, w],
                [-a, w],
                [-a, -w],
                [-w, -w],
            ]
        )
    if shape == "heart":
        return _heart_polygon()
    raise ValueError(f"unknown shape {shape!r}")


def _regular_polygon(n: int, radius: float, phase: float = 0.0) -> FloatArray:
    angles = math.pi / 2 + phase + 2 * math.pi * np.arange(n) / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _heart_polygon() -> FloatArray:
    """The classic parametric heart, centred on its bounding box and scaled into the unit circle."""
    t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(axis=0) + pts.min(axis=0)) / 2
    return np.asarray(pts / np.linalg.norm(pts, axis=1).max())


def _inside_polygon(x: FloatArray, y: FloatArray, poly: FloatArray) -> NDArray[np.bool_]:
    """Even-odd ray casting, vectorised over points, looping over the polygon's edges."""
    inside = np.zeros(x.shape, dtype=bool)
    xj, yj = poly[-1]
    for xi, yi in poly:
        crosses = (yi > y) != (yj > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = (xj - xi) * (y - yi) / (yj - yi) + xi
        inside ^= crosses & (x < x_at)
        xj, yj = xi, yi
    return inside


def background_array(scene: Scene, size: int, *, seed: int = 0) -> FloatArray:
    """The scene's background as a (size, size, 3) float RGB array, before any object is drawn."""
    rng = _rng(scene, seed, stream=1)
    v, u = (np.mgrid[0:size, 0:size] + 0.5) / size  # u right, v down, both in 0..1
    mix = _TEXTURES[scene.background](u, v, rng)
    dark, light = (np.asarray(t, dtype=np.float64) for t in BACKGROUND_TONES[scene.background])
    return np.asarray(dark + mix[..., None] * (light - dark))


# Each texture returns how far each pixel is from the first tone towards the second, in 0..1.
Texture = Callable[[FloatArray, FloatArray, np.random.Generator], FloatArray]


def _plain(u: FloatArray, v: FloatArray, rng: np.random.Generator) -> FloatArray:
    return np.zeros_like(u)


def _sky(u: FloatArray, v: FloatArray, rng: np.random.Generator) -> FloatArray:
    # Lighter towards the horizon, with a faint haze so it is not a plain colour.
    return np.clip(0.8 * v + 0.2 * _value_noise(u, v, 3, 3, rng), 0, 1)


def _striped(u: FloatArray, v: FloatArray, rng: np.random.Generator) -> FloatArray:
    phase = rng.uniform()
    return (np.mod((u + v) * 5.0 + phase, 1.0) < 0.5).astype(np.float64)


def _checkered(u: FloatArray, v: FloatArray, rng: np.random.Generator) -> FloatArray:
    pu, pv = rng.uniform(size=2)
    return np.mod(np.floor(u * 6 + pu) + np.floor(v * 6 + pv), 2)


def _dotted(u: FloatArray, v: FloatArray, rng: np.random.Generator) -> FloatArray:
    pu, pv = rng.uniform(size=2)
    fu = np.mod(u * 8 + pu, 1.0) - 0.5
    fv = np.mod(v * 8 + pv, 1.0) - 0.5
    return (fu * fu + fv * fv < 0.2**2).astype(np.float64)


def _grass(u: FloatArray, v: FloatArray, rng: np.random.Generator) -> FloatArray:
    # Narrow, tall cells read as blades.
    blades = _value_noise(u, v, 40, 4, rng)
    return np.clip(0.75 * blades + 0.25 * _value_noise(u, v, 6, 6, rng), 0, 1)


def _water(u: FloatArray, v: FloatArray, rng: np.random.Generator) -> FloatArray:
    p1, p2 = rng.uniform(0, 2 * math.pi, size=2)
    waves = np.sin(2 * math.pi * (v * 7 + 0.12 * np.sin(2 * math.pi * u * 2.5 + p1)) + p2)
    return 0.5 + 0.5 * waves


def _sand(u: FloatArray, v: FloatArray, rng: np.random.Generator) -> FloatArray:
    p = rng.uniform(0, 2 * math.pi)
    ripples = 0.5 + 0.5 * np.sin(2 * math.pi * (v * 4 + u * 1.5) + p)
    return np.clip(0.5 * ripples + 0.5 * _value_noise(u, v, 24, 24, rng), 0, 1)


def _brick(u: FloatArray, v: FloatArray, rng: np.random.Generator) -> FloatArray:
    pu, pv = rng.uniform(size=2)
    rows = v * 7 + pv
    row_index = np.floor(rows)
    cols = u * 3.5 + pu + 0.5 * np.mod(row_index, 2)  # every other row offset by half a brick
    mortar = 0.07
    in_mortar = (np.mod(rows, 1.0) < mortar * 2) | (np.mod(cols, 1.0) < mortar)
    return in_mortar.astype(np.float64)


def _value_noise(
    u: FloatArray, v: FloatArray, cells_u: int, cells_v: int, rng: np.random.Generator
) -> FloatArray:
    """Smooth random field in 0..1: a random lattice, smoothstep-interpolated."""
    lattice = rng.uniform(size=(cells_v + 2, cells_u + 2))
    fu, fv = u * cells_u, v * cells_v
    iu, iv = np.floor(fu).astype(np.intp), np.floor(fv).astype(np.intp)
    su, sv = _smoothstep(fu - iu), _smoothstep(fv - iv)
    top = lattice[iv, iu] * (1 - su) + lattice[iv, iu + 1] * su
    bottom = lattice[iv + 1, iu] * (1 - su) + lattice[iv + 1, iu + 1] * su
    return np.asarray(top * (1 - sv) + bottom * sv)


def _smoothstep(t: FloatArray) -> FloatArray:
    return np.asarray(t * t * (3 - 2 * t))


_TEXTURES: dict[str, Texture] = {
    "gray": _plain,
    "pink": _plain,
    "sky": _sky,
    "striped": _striped,
    "checkered": _checkered,
    "dotted": _dotted,
    "grass": _grass,
    "water": _water,
    "sand": _sand,
    "brick": _brick,
}


def _downsample(arr: FloatArray, factor: int) -> FloatArray:
    """Box filter: the mean of each factor x factor block, which is what anti-aliasing needs."""
    h, w, c = arr.shape
    return np.asarray(arr.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3)))


def _to_uint8(arr: FloatArray) -> NDArray[np.uint8]:
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
