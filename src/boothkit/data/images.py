"""Instance photos: load them exactly as training sees them, and check a whole folder first.

People train on photos straight off a phone, a scanner, a web page or a cloud folder, so a folder
holds sideways JPEGs, CMYK scans, transparent PNGs, 16-bit TIFFs, HEIC files, macOS litter and the
odd PDF. `check_folder` gives every entry one status, so the user sees in one report what will be
used, what was fixed on the way in, and what was refused and why:

- accepted: used as is;
- fixed: used after a conversion that training would otherwise get wrong (the reason says which);
- warning: used, but probably not what the user wants (small, elongated, duplicate, animated);
- rejected: cannot be used (unreadable, truncated, not an image, a decompression bomb, tiny);
- ignored: not meant to be an image (captions, metadata, system files, hidden files and folders).

`load_image` and `check_folder` share one decoding path, so what the check promises is what the
training loop gets. The folder is only ever read: nothing is written, renamed or deleted.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import stat
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image, ImageColor, ImageFile, UnidentifiedImageError

from boothkit.errors import BoothkitError

Status = Literal["accepted", "fixed", "warning", "rejected", "ignored"]
STATUSES: tuple[Status, ...] = ("accepted", "fixed", "warning", "rejected", "ignored")
USABLE: frozenset[Status] = frozenset({"accepted", "fixed", "warning"})

# Formats a person actually trains on. Image.open is restricted to these so that a stray file is
# never handed to an exotic parser (EPS, for one, starts Ghostscript when loaded).
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF", "HEIF", "AVIF")
FORMAT_NAMES = "JPEG, PNG, WebP, TIFF, BMP, GIF or HEIC"

# Files operating systems, NAS boxes and archivers drop into folders.
SYSTEM_FILES = frozenset({".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"})
SYSTEM_FOLDERS = frozenset({"__macosx", "@eadir", "$recycle.bin", "system volume information"})
CAPTION_SUFFIX = ".txt"
METADATA_FILE = "metadata.jsonl"
# Companion files (captions, metadata, editor sidecars, notes): expected beside photos, never used.
COMPANION_SUFFIXES = frozenset(
    {
        ".txt",
        ".caption",
        ".json",
        ".jsonl",
        ".md",
        ".csv",
        ".tsv",
        ".yaml",
        ".yml",
        ".toml",
        ".xmp",
        ".aae",
        ".ini",
        ".log",
        ".rst",
        ".htm",
        ".html",
        ".url",
        ".webloc",
    }
)
# Camera RAW files are TIFF-like; Pillow would read their small embedded preview, not the photo.
RAW_SUFFIXES = frozenset(
    {
        ".cr2",
        ".cr3",
        ".crw",
        ".nef",
        ".nrw",
        ".arw",
        ".srf",
        ".sr2",
        ".dng",
        ".raf",
        ".orf",
        ".rw2",
        ".pef",
        ".srw",
        ".raw",
        ".3fr",
        ".iiq",
        ".x3f",
    }
)

HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)
AVIF_BRANDS = frozenset({b"avif", b"avis"})
VIDEO_BRANDS = frozenset({b"isom", b"iso2", b"mp41", b"mp42", b"qt  ", b"M4V ", b"3gp4", b"3gp5", b"avc1"})

# Perceptual-hash distance (of 64 bits) at or below which two photos count as the same view. On the
# shared DreamBooth photos, distinct shots of one subject are >= 16 apart, while a re-encoded,
# resized, brightened or 2%-cropped copy is <= 8 apart.
DUPLICATE_DISTANCE = 10
# long side / short side above which a square centre crop throws away more than half the photo.
MAX_ASPECT = 2.0

_ORIENTATION_TAG = 0x0112
_ORIENTATIONS: dict[int, tuple[Image.Transpose, str]] = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT, "mirrored left-right"),
    3: (Image.Transpose.ROTATE_180, "rotated 180°"),
    4: (Image.Transpose.FLIP_TOP_BOTTOM, "flipped top-bottom"),
    5: (Image.Transpose.TRANSPOSE, "mirrored and rotated 90° counter-clockwise"),
    6: (Image.Transpose.ROTATE_270, "rotated 90° clockwise"),
    7: (Image.Transpose.TRANSVERSE, "mirrored and rotated 90° clockwise"),
    8: (Image.Transpose.ROTATE_90, "rotated 90° counter-clockwise"),
}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
_MODE_NAMES = {
    "L": "grayscale (L)",
    "LA": "grayscale with alpha (LA)",
    "La": "grayscale with alpha (La)",
    "PA": "palette with alpha (PA)",
    "1": "black-and-white (1-bit)",
}
_COLOR_NAMES = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
}


# --------------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class FileReport:
    """One entry of the folder: its path relative to the folder (posix), status, and why."""

    file: str
    status: Status
    reason: str


@dataclass(frozen=True)
class CheckReport:
    """Every entry of a checked folder, sorted by relative path."""

    root: Path
    entries: tuple[FileReport, ...]

    def usable(self) -> list[Path]:
        """Absolute paths of the images training will use (accepted, fixed, warning), sorted."""
        return sorted(self.root / e.file for e in self.entries if e.status in USABLE)

    def rejected(self) -> list[FileReport]:
        return [e for e in self.entries if e.status == "rejected"]

    def skipped(self) -> list[str]:
        """'file: reason' for each rejected file (what --skip-invalid leaves out)."""
        return [f"{self.root / e.file}: {e.reason}" for e in self.rejected()]

    def require_usable(self, where: str, *, skip_invalid: bool, empty_hint: str | None = None) -> list[Path]:
        """:meth:`usable`, refusing a folder with rejected files (unless ``skip_invalid``) or none usable;
        ``where`` names the folder in the message (e.g. ``--class-dir DIR``)."""
        if self.rejected() and not skip_invalid:
            raise BoothkitError(
                f"some files in {where} can't be used:\n{self.format()}",
                hint="fix or remove the rejected files, or pass --skip-invalid to train on the rest",
            )
        usable = self.usable()
        if not usable:
            raise BoothkitError(f"{where} holds no usable images", hint=empty_hint)
        return usable

    def counts(self) -> dict[Status, int]:
        """How many entries have each status (every status present, zeros included)."""
        found = Counter(e.status for e in self.entries)
        return {s: found[s] for s in STATUSES}

    def to_json(self) -> list[dict[str, str]]:
        return [{"file": e.file, "status": e.status, "reason": e.reason} for e in self.entries]

    def format(self) -> str:
        """One aligned line per entry, then a summary line with the count of each status."""
        width = min(48, max((len(e.file) for e in self.entries), default=0))
        lines = [f"{self.root}:"]
        for e in self.entries:
            lines.append(f"  {e.status:<8}  {e.file:<{width}}  {e.reason}".rstrip())
        counts = self.counts()
        per_status = ", ".join(f"{counts[s]} {s}" for s in STATUSES)
        usable = sum(counts[s] for s in USABLE)
        noun = "entry" if len(self.entries) == 1 else "entries"
        lines.append(f"{len(self.entries)} {noun}: {per_status} ({usable} usable)")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Colours and geometry


def parse_color(value: str) -> tuple[int, int, int]:
    """ "white", "black", "#rrggbb", "#rgb", "r,g,b" or a CSS colour name -> (r, g, b).

    Used for --alpha-background, the colour transparent areas are composited onto.
    """
    text = value.strip().lower()
    if text in _COLOR_NAMES:
        return _COLOR_NAMES[text]
    if "," in text and not text.startswith("rgb"):
        parts = [p.strip() for p in text.split(",")]
        if len(parts) == 3 and all(p.isdigit() and int(p) <= 255 for p in parts):
            return (int(parts[0]), int(parts[1]), int(parts[2]))
    else:
        try:
            rgb = ImageColor.getrgb(text)
        except ValueError:
            pass
        else:
            return (rgb[0], rgb[1], rgb[2])
    raise BoothkitError(
        f"{value!r} is not a colour",
        hint="use white, black, #rrggbb or r,g,b with each part 0-255 (e.g. --alpha-background 255,255,255)",
    )


def describe_color(rgb: tuple[int, int, int]) -> str:
    """'white', 'black' or '#rrggbb': how reports name the alpha background."""
    for name, value in _COLOR_NAMES.items():
        if value == rgb:
            return name
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def resize_and_crop(
    image: Image.Image,
    size: tuple[int, int],
    *,
    crop: Literal["center", "random"] = "center",
    rng: random.Random | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """Resize (Lanczos) so the image covers size=(width, height), then crop to exactly that size.

    Returns the crop and its (top, left) offset in the resized image: SDXL conditions on this
    offset (its crop-coords time id), so it must be the offset actually used. 'random' draws the
    offset from `rng` (pass one for reproducible crops; without it a fresh OS-seeded one is used).
    """
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if crop not in ("center", "random"):
        raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
    scale = max(width / image.width, height / image.height)
    resized_w = max(width, round(image.width * scale))
    resized_h = max(height, round(image.height * scale))
    resized = image
    if (resized_w, resized_h) != image.size:
        resized = image.resize((resized_w, resized_h), Image.Resampling.LANCZOS)
    if crop == "random":
        r = rng if rng is not None else random.Random()
        top, left = r.randint(0, resized_h - height), r.randint(0, resized_w - width)
    else:
        top, left = (resized_h - height) // 2, (resized_w - width) // 2
    return resized.crop((left, top, left + width, top + height)), (top, left)


# --------------------------------------------------------------------------------------------------
# Decoding


class _Unusable(Exception):
    """Why a file cannot be used, phrased for a report line (the path is added by the caller)."""

    def __init__(self, reason: str, hint: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.hint = hint


@dataclass
class _Decoded:
    """An image as training sees it, plus what was done to it and what the user should know."""

    image: Image.Image
    fixes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _Sniffed(NamedTuple):
    head: bytes
    kind: Literal["heif", "avif", "other"]


def _read_head(path: Path, n: int = 4096) -> bytes:
    """The first bytes of a regular file; _Unusable for links to nowhere, folders, FIFOs, empties."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if path.is_symlink():
            raise _Unusable(
                f"broken symbolic link (points to {os.readlink(path)}, which does not exist)"
            ) from None
        raise _Unusable("does not exist") from None
    except OSError as e:
        raise _Unusable(f"cannot be read: {e.strerror or e}") from None
    if not stat.S_ISREG(info.st_mode):
        raise _Unusable("not a regular file (a folder, device or pipe)")
    if info.st_size == 0:
        raise _Unusable("empty file (0 bytes)")
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise _Unusable(f"cannot be read: {e.strerror or e}") from None


def _ftyp_brands(head: bytes) -> set[bytes]:
    """Major and compatible brands of an ISO-BMFF `ftyp` box (HEIC, AVIF, MP4, MOV), else empty."""
    if len(head) < 12 or head[4:8] != b"ftyp":
        return set()
    box_end = min(len(head), max(16, int.from_bytes(head[0:4], "big")))
    brands = {head[8:12]}
    brands.update(head[i : i + 4] for i in range(16, box_end - 3, 4))
    return brands


def _sniff(path: Path) -> _Sniffed:
    head = _read_head(path)
    brands = _ftyp_brands(head)
    if brands & AVIF_BRANDS:
        return _Sniffed(head, "avif")
    if brands & HEIF_BRANDS:
        return _Sniffed(head, "heif")
    return _Sniffed(head, "other")


_heif_registered: object = None


def _enable_heif() -> None:
    """Register pillow-heif's opener on first use; _Unusable saying how to install it if missing.

    Registration is lazy so that importing boothkit never imports pillow-heif.
    """
    global _heif_registered
    try:
        import pillow_heif
    except ImportError:
        raise _Unusable(
            "HEIC/HEIF photo, but HEIC support is not installed: run `pip install pillow-heif` "
            "(or export the photo as JPEG)",
            hint="pip install pillow-heif",
        ) from None
    if _heif_registered is not pillow_heif:
        pillow_heif.register_heif_opener()
        _heif_registered = pillow_heif


def _describe_content(head: bytes) -> str:
    """What a file Pillow cannot open actually is, so the reason is more than 'unreadable'."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"%PDF"):
        return "a PDF document, not an image (export the page as PNG or JPEG)"
    if b"<svg" in text:
        return "an SVG drawing (vector, not pixels): export it as PNG"
    if text.startswith((b"<!doctype html", b"<html")):
        return "a web page (HTML), not the image itself: save the image, not the page"
    if _ftyp_brands(head) & VIDEO_BRANDS:
        return "a video, not a photo: export a frame as PNG or JPEG"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive: extract it first"
    if b"\x00" not in head and all(c >= 32 or c in b"\t\r\n\f" for c in head[:512]):
        return "a text file, not an image"
    return f"not a recognised image (boothkit reads {FORMAT_NAMES})"


def _open_formats() -> tuple[str, ...]:
    Image.init()  # load every plugin so HEIF/AVIF openers registered by plugins are listed
    return tuple(f for f in PHOTO_FORMATS if f in Image.OPEN)


def _bomb_reason(pixels: int, size: str | None = None) -> str:
    """The reason for a decompression bomb; `size` ("WxH") when known, else the pixel count."""
    limit = Image.MAX_IMAGE_PIXELS or 0
    declared = f"{size} pixels" if size else f"{pixels:,} pixels"
    return (
        f"declares {declared} ({pixels / 1e6:.0f} megapixels), above the {limit / 1e6:.0f}-megapixel "
        "decompression-bomb limit: not decoded"
    )


@contextmanager
def _opened(path: Path) -> Iterator[ImageFile.ImageFile]:
    """Image.open, lazily (header only), restricted to photo formats, with every failure a reason."""
    sniffed = _sniff(path)
    if sniffed.kind == "heif":
        _enable_heif()
    formats = _open_formats()
    if sniffed.kind == "avif" and "AVIF" not in formats:
        raise _Unusable("AVIF image, but this Pillow cannot decode AVIF: export the photo as JPEG or PNG")
    try:
        with warnings.catch_warnings():
            # Pillow warns between 1x and 2x MAX_IMAGE_PIXELS; _check_bomb rejects those itself.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path, formats=formats)
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _Unusable(_bomb_reason(int(found.group(1))) if found else f"{e}: not decoded") from None
    except UnidentifiedImageError:
        raise _Unusable(_describe_content(sniffed.head)) from None
    except Exception as e:  # Pillow's header parsers raise many types on bad input
        raise _Unusable(f"unreadable image header ({type(e).__name__}: {e})") from None
    with image:
        yield image


def _check_bomb(image: Image.Image) -> None:
    """Reject from the header size alone, before any pixel is decoded or allocated."""
    width, height = image.size
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise _Unusable(_bomb_reason(width * height, f"{width}x{height}"))


def _extra_frames(image: Image.Image) -> str | None:
    """A warning when only the first of several frames will be used."""
    # Phone and camera JPEGs often carry a depth map or preview as an MPO second frame: not animation.
    if image.format == "MPO":
        return None
    try:
        if not getattr(image, "is_animated", False):
            return None
        frames = f"{getattr(image, 'n_frames', 2)} frames"
    except Exception:  # counting frames parses them; a bad later frame is no concern here
        frames = "several frames"
    kind = "multi-page" if image.format == "TIFF" else "animated"
    return f"{kind} ({frames}): only the first frame is used"


def _decode_pixels(image: ImageFile.ImageFile) -> None:
    """Fully decode the first frame. Truncation is found here, by decoding, never by file size."""
    try:
        image.seek(0)
        image.load()
    except Exception as e:  # decoders raise OSError, SyntaxError, EOFError, struct.error...
        raise _Unusable(f"could not be decoded, the file is truncated or corrupt ({e})") from None


def _orientation(image: Image.Image) -> tuple[int | None, str | None]:
    """The EXIF orientation (2-8 when a transpose is needed), or a warning when EXIF is unreadable."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG)
    except Exception:  # malformed EXIF must not make a readable photo unusable
        return None, "EXIF data is malformed, so its orientation was not applied: check the photo is upright"
    return (value, None) if isinstance(value, int) and value in _ORIENTATIONS else (None, None)


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    """Scale 16/32-bit grayscale to 8 bits. Image.convert clips instead of scaling (mostly white)."""
    array = np.asarray(image).astype(np.float64)
    if image.mode.startswith("I;16"):
        array = array / 257.0
    elif image.mode == "F" and array.size and array.min() >= 0.0 and array.max() <= 1.0:
        array = array * 255.0
    elif image.mode == "I" and array.size and array.min() >= 0 and array.max() <= 255:
        pass
    elif image.mode == "I" and array.size and array.min() >= 0 and array.max() <= 65535:
        array = array / 257.0
    elif array.size:
        low, high = float(array.min()), float(array.max())
        array = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
    gray = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _composite(image: Image.Image, background: tuple[int, int, int]) -> tuple[Image.Image, str]:
    """Flatten transparency onto `background`. A plain convert('RGB') would turn it black."""
    rgba = image.convert("RGBA")
    alpha = rgba.getchannel("A")
    if alpha.getextrema() == (255, 255):
        return rgba.convert("RGB"), "dropped an unused alpha channel (fully opaque)"
    canvas = Image.new("RGB", rgba.size, background)
    canvas.paste(rgba.convert("RGB"), mask=alpha)
    return canvas, f"composited transparent areas onto {describe_color(background)}"


def _to_rgb(image: Image.Image, background: tuple[int, int, int]) -> tuple[Image.Image, list[str]]:
    """Any mode -> RGB, returning what was done (empty for images that already are RGB)."""
    mode = image.mode
    if mode == "RGB":
        return image, []
    if mode == "P":
        if "transparency" in image.info:
            rgba, fix = _composite(image, background)
            return rgba, ["converted palette image to RGB", fix]
        return image.convert("RGB"), ["converted palette image to RGB"]
    if mode in _ALPHA_MODES:
        rgb, fix = _composite(image, background)
        done = [] if mode in ("RGBA", "RGBa") else [f"converted {_MODE_NAMES.get(mode, mode)} to RGB"]
        return rgb, [*done, fix]
    if mode.startswith("I;16") or mode in ("I", "F"):
        bits = "16-bit" if mode.startswith("I;16") else "32-bit"
        return _sixteen_bit_to_rgb(image), [f"converted {bits} grayscale ({mode}) to 8-bit RGB"]
    try:
        converted = image.convert("RGB")
    except ValueError:
        raise _Unusable(
            f"colour mode {mode} is not supported: save the image as an RGB JPEG or PNG"
        ) from None
    return converted, [f"converted {_MODE_NAMES.get(mode, mode)} to RGB"]


def _decode(path: Path, background: tuple[int, int, int]) -> _Decoded:
    """The one decoding path shared by load_image and check_folder."""
    with _opened(path) as opened:
        _check_bomb(opened)
        notes = [w for w in (_extra_frames(opened),) if w]
        _decode_pixels(opened)
        orientation, exif_warning = _orientation(opened)
        if exif_warning:
            notes.append(exif_warning)
        rgb, fixes = _to_rgb(opened, background)
        if orientation is not None:
            method, description = _ORIENTATIONS[orientation]
            rgb = rgb.transpose(method)
            fixes.insert(0, f"applied EXIF orientation {orientation} ({description})")
        if rgb is opened:
            rgb = opened.copy()  # detach from the file, which closes when this block ends
    return _Decoded(rgb, fixes, notes)


def load_image(path: str | Path, *, alpha_background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """The image exactly as training sees it before resizing.

    RGB, upright (EXIF orientation applied), transparency composited onto `alpha_background`,
    first frame of animations, 16-bit scaled to 8-bit. Raises BoothkitError naming the file when
    it cannot be used (unreadable, truncated, not an image, a decompression bomb, HEIC without
    pillow-heif).
    """
    p = Path(path)
    try:
        return _decode(p, alpha_background).image
    except _Unusable as e:
        raise BoothkitError(f"{p}: {e.reason}", hint=e.hint) from None


# --------------------------------------------------------------------------------------------------
# Duplicates

_DCT_SIZE = 32


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * i + 1) * k / (2 * n))


_DCT = _dct_matrix(_DCT_SIZE)


def perceptual_hash(image: Image.Image) -> int:
    """64-bit pHash: signs of the 8x8 lowest 2-D DCT frequencies of a 32x32 grayscale, vs their median.

    pHash rather than dHash: dHash reads left-right gradients, which are all zero on flat studio
    backgrounds, so distinct poses of a cartoon on white came out 1-5 bits apart. pHash compares
    the overall shape and stays >= 16 apart on those, while copies differ by a few bits.
    """
    gray = image.convert("L").resize((_DCT_SIZE, _DCT_SIZE), Image.Resampling.BOX)
    coefficients = _DCT @ np.asarray(gray, dtype=np.float64) @ _DCT.T
    low = coefficients[:8, :8].flatten()
    bits = low > np.median(low)
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class _Seen:
    """Fingerprints of the usable images so far, to name the earlier one a duplicate repeats."""

    digests: dict[str, str] = field(default_factory=dict)
    hashes: list[tuple[int, str]] = field(default_factory=list)

    def duplicate_of(self, name: str, path: Path, image: Image.Image) -> str | None:
        digest, phash = _file_digest(path), perceptual_hash(image)
        earlier = self.digests.get(digest)
        note = None
        if earlier is not None:
            note = f"exact copy of {earlier}: it weights one view double; remove one"
        else:
            distance, other = min(((hamming(phash, h), o) for h, o in self.hashes), default=(64, ""))
            if distance <= DUPLICATE_DISTANCE:
                note = (
                    f"near duplicate of {other} (perceptual hash {distance}/64 bits apart): "
                    "it weights one view double; remove one"
                )
        self.digests.setdefault(digest, name)
        self.hashes.append((phash, name))
        return note


# --------------------------------------------------------------------------------------------------
# Folder check


class _Entry(NamedTuple):
    rel: PurePosixPath
    path: Path
    folder_reason: str | None  # set for folders reported (and skipped) as a whole


def _folder_skip_reason(path: Path) -> str | None:
    name = path.name
    if name.startswith("."):
        return "hidden folder: skipped"
    if name.lower() in SYSTEM_FOLDERS:
        return "system or archive metadata folder: skipped"
    if path.is_symlink():
        return "link to a folder: not followed (link the photos themselves, or copy the folder)"
    return None


def _walk(root: Path) -> tuple[list[_Entry], list[FileReport]]:
    """Every file, plus each skipped folder once; unreadable folders come back as rejected reports."""
    entries: list[_Entry] = []
    errors: list[FileReport] = []

    def on_error(error: OSError) -> None:
        where = Path(error.filename or root)
        rel = where.relative_to(root).as_posix() + "/" if where != root else "./"
        errors.append(FileReport(rel, "rejected", f"folder cannot be read: {error.strerror or error}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        base = Path(dirpath)
        keep = []
        for name in dirnames:
            reason = _folder_skip_reason(base / name)
            if reason is None:
                keep.append(name)
            else:
                entries.append(
                    _Entry(PurePosixPath((base / name).relative_to(root).as_posix()), base / name, reason)
                )
        dirnames[:] = keep
        for name in filenames:
            path = base / name
            entries.append(_Entry(PurePosixPath(path.relative_to(root).as_posix()), path, None))
    return entries, errors


def companion_reason(name: str, image_stems: frozenset[str]) -> str | None:
    """Why a file is ignored rather than checked as an image, or None when it should be checked."""
    lowered = name.lower()
    if lowered in SYSTEM_FILES:
        return "system file"
    if name.startswith("."):
        return "hidden file"
    if lowered == METADATA_FILE:
        return "caption metadata (metadata.jsonl)"
    suffix = PurePosixPath(lowered).suffix
    if suffix == CAPTION_SUFFIX:
        stem = PurePosixPath(name).stem
        if stem in image_stems:
            return "caption file"
        return f"text file: no image named {stem}.* beside it, so not a caption"
    if suffix in COMPANION_SUFFIXES:
        return f"not an image ({suffix} file)"
    return None


def _image_stems(entries: list[_Entry]) -> dict[PurePosixPath, frozenset[str]]:
    """Per folder, the stems of files that may be images (for telling captions from stray text)."""
    stems: dict[PurePosixPath, set[str]] = {}
    for entry in entries:
        suffix = entry.rel.suffix.lower()
        if (
            entry.folder_reason is None
            and suffix not in COMPANION_SUFFIXES
            and not entry.rel.name.startswith(".")
        ):
            stems.setdefault(entry.rel.parent, set()).add(entry.rel.stem)
    return {folder: frozenset(names) for folder, names in stems.items()}


@dataclass(frozen=True)
class _Policy:
    resolution: int
    min_side: int
    background: tuple[int, int, int]


def _size_notes(width: int, height: int, policy: _Policy) -> list[str]:
    """Warnings about size and shape (after the too-small rejection)."""
    notes = []
    short, long = min(width, height), max(width, height)
    if short < policy.resolution:
        notes.append(
            f"will be upscaled from {width}x{height} to the {policy.resolution} px training size (softer detail)"
        )
    if long / short > MAX_ASPECT:
        kept = 100 * short / long
        notes.append(
            f"very elongated ({width}x{height}, {long / short:.1f}:1): a square centre crop keeps only {kept:.0f}% of it"
        )
    return notes


def _check_image(entry: _Entry, policy: _Policy, seen: _Seen) -> FileReport:
    name = entry.rel.as_posix()
    if entry.rel.suffix.lower() in RAW_SUFFIXES:
        return FileReport(name, "rejected", "camera RAW file: export it as JPEG or PNG first")
    try:
        decoded = _decode(entry.path, policy.background)
    except _Unusable as e:
        return FileReport(name, "rejected", e.reason)
    width, height = decoded.image.size
    if min(width, height) < policy.min_side:
        return FileReport(
            name,
            "rejected",
            f"too small ({width}x{height}): the short side must be at least {policy.min_side} px",
        )
    notes = decoded.warnings + _size_notes(width, height, policy)
    duplicate = seen.duplicate_of(name, entry.path, decoded.image)
    if duplicate:
        notes.append(duplicate)
    if notes:
        return FileReport(name, "warning", "; ".join(notes + decoded.fixes))
    if decoded.fixes:
        return FileReport(name, "fixed", "; ".join(decoded.fixes))
    return FileReport(name, "accepted", "")


def _path_order(rel: str) -> tuple[tuple[str, str], ...]:
    """Sort key: folder by folder, case-insensitively (exact case breaks ties), like file managers."""
    return tuple((part.casefold(), part) for part in PurePosixPath(rel).parts)


def check_folder(
    folder: str | Path,
    *,
    resolution: int = 512,
    alpha_background: tuple[int, int, int] = (255, 255, 255),
    min_side: int | None = None,
) -> CheckReport:
    """Check every entry of `folder` (recursively, hidden folders skipped) before any training.

    Each file is decoded the way load_image decodes it, so truncated files are caught here and
    not mid-training. Images shorter than `min_side` (default max(16, resolution // 8)) are
    rejected; shorter than `resolution`, warned about. Of two duplicates the later one (in path
    order) is warned about. The folder is never written to.
    """
    root = Path(os.path.abspath(Path(folder).expanduser()))
    if not root.exists():
        raise BoothkitError(f"{root} does not exist", hint="pass the folder that holds your photos")
    if not root.is_dir():
        raise BoothkitError(
            f"{root} is not a folder", hint="pass the folder that holds your photos, not one file"
        )
    if resolution <= 0:
        raise BoothkitError(f"resolution must be a positive number of pixels, got {resolution}")
    policy = _Policy(resolution, max(16, resolution // 8) if min_side is None else min_side, alpha_background)
    entries, reports = _walk(root)
    entries.sort(key=lambda e: _path_order(e.rel.as_posix()))
    stems = _image_stems(entries)
    seen = _Seen()
    for entry in entries:
        if entry.folder_reason is not None:
            reports.append(FileReport(entry.rel.as_posix() + "/", "ignored", entry.folder_reason))
            continue
        ignored = companion_reason(entry.rel.name, stems.get(entry.rel.parent, frozenset()))
        if ignored is not None:
            reports.append(FileReport(entry.rel.as_posix(), "ignored", ignored))
        else:
            reports.append(_check_image(entry, policy, seen))
    reports.sort(key=lambda r: _path_order(r.file))
    return CheckReport(root, tuple(reports))


def images_hash(paths: Sequence[Path]) -> str:
    """A short hash of a set of image files (names and bytes, in name order): whether a run's photos
    or class images changed, for resume and for the files' metadata."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]
