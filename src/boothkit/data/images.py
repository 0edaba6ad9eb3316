"""Instance photos: load them as training sees them, and check a folder before any training.

Every file gets a status: accepted, fixed (with what was done), warning (with why), rejected (with
why) or ignored (system files, captions, hidden folders). The folder is only ever read.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from boothkit.errors import BoothkitError

Status = Literal["accepted", "fixed", "warning", "rejected", "ignored"]
STATUSES: tuple[Status, ...] = ("accepted", "fixed", "warning", "rejected", "ignored")
IGNORED_NAMES = {".ds_store", "thumbs.db", "desktop.ini", "metadata.jsonl"}
IGNORED_SUFFIXES = {".txt", ".json", ".jsonl", ".md", ".csv", ".toml", ".yaml", ".yml", ".caption"}

_COLORS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128), "grey": (128, 128, 128)}


@dataclass(frozen=True)
class FileReport:
    file: str
    status: Status
    reason: str


@dataclass(frozen=True)
class CheckReport:
    root: Path
    entries: tuple[FileReport, ...]

    def usable(self) -> list[Path]:
        return sorted(
            self.root / e.file for e in self.entries if e.status in ("accepted", "fixed", "warning")
        )

    def rejected(self) -> list[FileReport]:
        return [e for e in self.entries if e.status == "rejected"]

    def to_json(self) -> list[dict[str, str]]:
        return [{"file": e.file, "status": e.status, "reason": e.reason} for e in self.entries]

    def format(self) -> str:
        width = max((len(e.file) for e in self.entries), default=4)
        lines = [f"  {e.status:<8}  {e.file:<{width}}  {e.reason}".rstrip() for e in self.entries]
        counts = ", ".join(f"{sum(e.status == s for e in self.entries)} {s}" for s in STATUSES)
        return "\n".join([f"{self.root}: {counts}", *lines])


def parse_color(value: str) -> tuple[int, int, int]:
    v = value.strip().lower()
    if v in _COLORS:
        return _COLORS[v]
    try:
        if v.startswith("#") and len(v) == 7:
            return (int(v[1:3], 16), int(v[3:5], 16), int(v[5:7], 16))
        parts = [int(p) for p in v.split(",")]
        if len(parts) == 3 and all(0 <= p <= 255 for p in parts):
            return (parts[0], parts[1], parts[2])
    except ValueError:
        pass
    raise BoothkitError(
        f"--alpha-background {value!r} is not a colour", hint="use white, black, #rrggbb or r,g,b"
    )


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> tuple[Image.Image, list[str]]:
    """Convert any mode to RGB; composite transparency onto `background` (never black)."""
    fixes: list[str] = []
    mode = image.mode
    if mode == "RGB":
        return image, fixes
    if mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
        fixes.append("converted palette to RGB")
        if image.mode == "RGB":
            return image, fixes
        mode = "RGBA"
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        fixes.append("converted 16-bit to 8-bit")
        mode = "L"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        image = Image.alpha_composite(canvas, rgba).convert("RGB")
        fixes.append(f"composited transparency onto {background}")
        return image, fixes
    fixes.append(f"converted {mode} to RGB")
    return image.convert("RGB"), fixes


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        w, h = image.size
        if w * h > (Image.MAX_IMAGE_PIXELS or 1 << 62):
            raise BoothkitError(f"{path}: {w}x{h} pixels exceeds the decompression-bomb limit; not decoded")
        image.load()
        return image
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise BoothkitError(f"{path} is not a readable image: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BoothkitError(f"{path} could not be decoded (truncated or corrupt?): {e}") from None


def _load(path: Path, background: tuple[int, int, int]) -> tuple[Image.Image, list[str], list[str]]:
    image = _open(path)
    fixes: list[str] = []
    warns: list[str] = []
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
        warns.append(f"animated ({image.n_frames} frames): using the first frame")
    orientation = image.getexif().get(0x0112, 1)
    if orientation not in (1, None):
        image = ImageOps.exif_transpose(image) or image
        fixes.append(f"applied EXIF orientation {orientation}")
    image, converted = _to_rgb(image, background)
    return image, fixes + converted, warns


def load_image(path: str | Path, *, alpha_background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """The image exactly as training sees it before resizing: RGB, upright, alpha composited."""
    return _load(Path(path), alpha_background)[0]


def resize_and_crop(
    image: Image.Image,
    size: tuple[int, int],
    *,
    crop: Literal["center", "random"] = "center",
    rng: random.Random | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """Resize to cover size=(width, height), then crop; returns the crop's (top, left)."""
    w, h = size
    scale = max(w / image.width, h / image.height)
    rw, rh = max(w, round(image.width * scale)), max(h, round(image.height * scale))
    resized = image.resize((rw, rh), Image.Resampling.LANCZOS)
    if crop == "random":
        r = rng or random.Random()
        top, left = r.randint(0, rh - h), r.randint(0, rw - w)
    else:
        top, left = (rh - h) // 2, (rw - w) // 2
    return resized.crop((left, top, left + w, top + h)), (top, left)


def _dhash(image: Image.Image) -> int:
    small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def _ignored(rel: Path) -> str | None:
    name = rel.name.lower()
    if name in IGNORED_NAMES:
        return "system file"
    if name.startswith("."):
        return "hidden file"
    if rel.suffix.lower() in IGNORED_SUFFIXES:
        return (
            "caption or metadata file"
            if rel.suffix.lower() in (".txt", ".jsonl", ".caption")
            else "not an image"
        )
    return None


def check_folder(
    folder: str | Path,
    *,
    resolution: int = 512,
    alpha_background: tuple[int, int, int] = (255, 255, 255),
    min_side: int | None = None,
) -> CheckReport:
    root = Path(folder)
    if not root.is_dir():
        raise BoothkitError(f"{root} is not a folder", hint="pass the folder that holds your photos")
    floor = min_side if min_side is not None else max(16, resolution // 8)
    entries: list[FileReport] = []
    hashes: list[tuple[int, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for d in sorted(dirnames):
            if d.startswith("."):
                entries.append(
                    FileReport((base / d).relative_to(root).as_posix() + "/", "ignored", "hidden folder")
                )
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = base / name
            rel = path.relative_to(root)
            entries.append(_check_file(path, rel, resolution, floor, alpha_background, hashes))
    return CheckReport(root, tuple(sorted(entries, key=lambda e: e.file)))


def _check_file(
    path: Path,
    rel: Path,
    resolution: int,
    floor: int,
    background: tuple[int, int, int],
    hashes: list[tuple[int, str]],
) -> FileReport:
    key = rel.as_posix()
    if (why := _ignored(rel)) is not None:
        return FileReport(key, "ignored", why)
    if path.is_symlink() and not path.exists():
        return FileReport(key, "rejected", "broken symbolic link")
    if path.stat().st_size == 0:
        return FileReport(key, "rejected", "empty file (0 bytes)")
    head = path.open("rb").read(64)
    if b"ftypheic" in head or b"ftypheix" in head or b"ftypmif1" in head:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
        except ImportError:
            return FileReport(
                key, "rejected", "HEIC photo: install HEIC support with `pip install pillow-heif`"
            )
    try:
        image, fixes, warns = _load(path, background)
    except BoothkitError as e:
        return FileReport(key, "rejected", e.message.replace(f"{path} ", "", 1).replace(f"{path}: ", "", 1))
    w, h = image.size
    if min(w, h) < floor:
        return FileReport(
            key, "rejected", f"too small ({w}x{h}); photos need at least {floor} px on the short side"
        )
    if min(w, h) < resolution:
        warns.append(f"will be upscaled from {w}x{h} to {resolution} px")
    if max(w, h) / min(w, h) > 2:
        warns.append(f"extreme aspect ratio {w}x{h}: a square centre crop keeps less than half of it")
    digest = _dhash(image)
    for other_hash, other in hashes:
        if bin(digest ^ other_hash).count("1") <= 4:
            warns.append(f"duplicate or near duplicate of {other} (weights one view double)")
            break
    hashes.append((digest, key))
    if warns:
        return FileReport(key, "warning", "; ".join(warns + fixes))
    if fixes:
        return FileReport(key, "fixed", "; ".join(fixes))
    return FileReport(key, "accepted", "")
