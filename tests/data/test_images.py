"""The instance-photo checker, on a folder holding one file of every kind people actually train on."""

from __future__ import annotations

import os
import random
import struct
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from boothkit.data import images
from boothkit.data.images import (
    CheckReport,
    check_folder,
    hamming,
    load_image,
    parse_color,
    perceptual_hash,
    resize_and_crop,
)
from boothkit.errors import BoothkitError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "dreambooth"
RESOLUTION = 64  # small photos keep the test fast; min_side defaults to 16 at this resolution
HEIC_BYTES = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)


def pattern(seed: int, size: tuple[int, int] = (80, 72)) -> Image.Image:
    """A distinct, asymmetric RGB image: random 6x6 colour blocks (so no two files look alike)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize(size, Image.Resampling.NEAREST)


def exif_with_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def bomb_png(width: int, height: int) -> bytes:
    """A valid-looking PNG whose header claims width x height but whose data is a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(16)))
        + chunk(b"IEND", b"")
    )


def half_transparent(seed: int) -> Image.Image:
    """RGBA whose right half is fully transparent black: it must come out background, not black."""
    rgba = pattern(seed).convert("RGBA")
    array = np.asarray(rgba).copy()
    array[:, 40:] = (0, 0, 0, 0)
    return Image.fromarray(array)


def build_zoo(folder: Path) -> None:
    """One file of each kind check_folder must handle."""
    folder.mkdir()
    upright = pattern(1, (96, 64))
    upright.transpose(Image.Transpose.ROTATE_90).save(
        folder / "phone_sideways.jpg", quality=95, subsampling=0, exif=exif_with_orientation(6)
    )
    other = pattern(32, (96, 64))
    other.transpose(Image.Transpose.ROTATE_270).save(
        folder / "rotated.webp", lossless=True, exif=exif_with_orientation(8)
    )
    pattern(2).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    pattern(3).convert("L").save(folder / "gray.png")
    gray_alpha = pattern(4).convert("LA")
    alpha = Image.new("L", gray_alpha.size, 255)
    alpha.paste(0, (0, 0, 20, 20))
    gray_alpha.putalpha(alpha)
    gray_alpha.save(folder / "gray_alpha.png")
    ramp = (np.arange(80 * 72, dtype=np.uint32).reshape(72, 80) * 11 % 65536).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "sixteen_bit.png")
    pattern(5).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png")
    palette = pattern(6).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.paste(15, (0, 0, 30, 72))
    palette.save(folder / "palette_transparent.png", transparency=15)
    half_transparent(7).save(folder / "transparent.png")
    pattern(8).convert("RGBA").save(folder / "opaque_rgba.png")
    frames = [pattern(s) for s in (9, 10, 11)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    frames = [pattern(s) for s in (12, 13)]
    frames[0].save(folder / "animated.webp", save_all=True, append_images=frames[1:], lossless=True)
    pattern(14).save(folder / "camera_mpo.jpg", format="MPO", save_all=True, append_images=[pattern(15)])
    pattern(16).save(folder / "photo.webp", quality=90)
    pattern(17).save(folder / "scan.tiff")
    pattern(18).save(folder / "old.bmp")
    pattern(19).save(folder / "UPPER.JPG", quality=90)
    pattern(20).save(folder / "no_extension", format="PNG")
    pattern(21).save(folder / "ça_été_🐱.png")
    (folder / "empty.jpg").write_bytes(b"")
    jpeg = folder / "truncated.jpg"
    pattern(22).save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    png = folder / "truncated.png"
    pattern(23).save(png)
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    (folder / "notes.jpg").write_text("this is not a photo\n", encoding="utf-8")
    (folder / "document.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n")
    (folder / "logo.svg").write_text('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>\n')
    (folder / "phone.heic").write_bytes(HEIC_BYTES)
    pattern(24).save(folder / "IMG_0001.CR2", format="TIFF")
    os.symlink(folder / "gone.jpg", folder / "broken_link.jpg")
    (folder / "bomb.png").write_bytes(bomb_png(30000, 30000))
    pattern(25, (8, 8)).save(folder / "tiny.png")
    pattern(26, (40, 400)).save(folder / "strip.png")
    pattern(27).save(folder / "dup_a.png")
    (folder / "dup_b.png").write_bytes((folder / "dup_a.png").read_bytes())
    near = np.asarray(pattern(27)).copy()
    near[30:36, 30:36] = 255 - near[30:36, 30:36]
    Image.fromarray(near).save(folder / "dup_c.png")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (folder / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (folder / "._phone_sideways.jpg").write_bytes(b"\x00\x05\x16\x07")
    (folder / "UPPER.txt").write_text("a photo of {token} {class_noun}\n")
    (folder / "stray.txt").write_text("todo: buy film\n")
    (folder / "metadata.jsonl").write_text('{"file_name": "photo.webp", "text": "a {token}"}\n')
    (folder / "info.json").write_text("{}")
    (folder / "README.md").write_text("# photos\n")
    (folder / ".thumbnails").mkdir()
    pattern(28).save(folder / ".thumbnails" / "thumb.png")
    (folder / "__MACOSX").mkdir()
    (folder / "__MACOSX" / "._dup_a.png").write_bytes(b"\x00\x05\x16\x07")
    (folder / "more").mkdir()
    pattern(29).save(folder / "more" / "inside.png")
    outside = folder.parent / "elsewhere"
    outside.mkdir()
    pattern(30).save(outside / "linked.png")
    os.symlink(outside, folder / "linked_folder", target_is_directory=True)


# file -> (status, a phrase the reason must contain)
EXPECTED: dict[str, tuple[str, str]] = {
    "phone_sideways.jpg": ("fixed", "applied EXIF orientation 6"),
    "rotated.webp": ("fixed", "applied EXIF orientation 8"),
    "cmyk.jpg": ("fixed", "converted CMYK to RGB"),
    "gray.png": ("fixed", "converted grayscale (L) to RGB"),
    "gray_alpha.png": ("fixed", "composited transparent areas onto white"),
    "sixteen_bit.png": ("fixed", "converted 16-bit grayscale"),
    "palette.png": ("fixed", "converted palette image to RGB"),
    "palette_transparent.png": ("fixed", "composited transparent areas onto white"),
    "transparent.png": ("fixed", "composited transparent areas onto white"),
    "opaque_rgba.png": ("fixed", "dropped an unused alpha channel"),
    "animated.gif": ("warning", "animated (3 frames): only the first frame is used"),
    "animated.webp": ("warning", "animated (2 frames)"),
    "camera_mpo.jpg": ("accepted", ""),
    "photo.webp": ("accepted", ""),
    "scan.tiff": ("accepted", ""),
    "old.bmp": ("accepted", ""),
    "UPPER.JPG": ("accepted", ""),
    "no_extension": ("accepted", ""),
    "ça_été_🐱.png": ("accepted", ""),
    "more/inside.png": ("accepted", ""),
    "empty.jpg": ("rejected", "empty file (0 bytes)"),
    "truncated.jpg": ("rejected", "truncated or corrupt"),
    "truncated.png": ("rejected", "truncated or corrupt"),
    "notes.jpg": ("rejected", "a text file, not an image"),
    "document.pdf": ("rejected", "a PDF document"),
    "logo.svg": ("rejected", "an SVG drawing"),
    "phone.heic": ("rejected", "pip install pillow-heif"),
    "IMG_0001.CR2": ("rejected", "camera RAW file"),
    "broken_link.jpg": ("rejected", "broken symbolic link"),
    "bomb.png": ("rejected", "decompression-bomb limit: not decoded"),
    "tiny.png": ("rejected", "too small (8x8): the short side must be at least 16 px"),
    "strip.png": ("warning", "a square centre crop keeps only 10% of it"),
    "dup_a.png": ("accepted", ""),
    "dup_b.png": ("warning", "exact copy of dup_a.png: it weights one view double"),
    "dup_c.png": ("warning", "near duplicate of dup_a.png"),
    ".DS_Store": ("ignored", "system file"),
    "Thumbs.db": ("ignored", "system file"),
    "desktop.ini": ("ignored", "system file"),
    "._phone_sideways.jpg": ("ignored", "hidden file"),
    "UPPER.txt": ("ignored", "caption file"),
    "stray.txt": ("ignored", "no image named stray.* beside it"),
    "metadata.jsonl": ("ignored", "caption metadata"),
    "info.json": ("ignored", "not an image"),
    "README.md": ("ignored", "not an image"),
    ".thumbnails/": ("ignored", "hidden folder"),
    "__MACOSX/": ("ignored", "metadata folder"),
    "linked_folder/": ("ignored", "not followed"),
}


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime (ns) of every entry, links included, to prove the check wrote nothing."""
    state: dict[str, tuple[bytes, int]] = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        content = b"" if path.is_symlink() or path.is_dir() else path.read_bytes()
        state[path.relative_to(folder).as_posix()] = (content, info.st_mtime_ns)
    return state


@pytest.fixture(scope="module")
def zoo(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, CheckReport, dict[str, tuple[bytes, int]], dict[str, tuple[bytes, int]]]:
    folder = tmp_path_factory.mktemp("zoo") / "photos"
    build_zoo(folder)
    before = snapshot(folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "pillow_heif", None)  # HEIC support absent, whatever is installed
        report = check_folder(folder, resolution=RESOLUTION)
    return folder, report, before, snapshot(folder)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_kind_of_file_gets_its_status(zoo, name: str) -> None:
    _, report, _, _ = zoo
    entry = {e.file: e for e in report.entries}[name]
    status, phrase = EXPECTED[name]
    assert (entry.status, phrase in entry.reason) == (status, True), entry
    if status == "accepted":
        assert entry.reason == ""


def test_report_lists_every_entry_once_sorted_and_skips_hidden_folders(zoo) -> None:
    _, report, _, _ = zoo
    files = [e.file for e in report.entries]
    assert sorted(files) == sorted(EXPECTED)  # nothing inside .thumbnails/, __MACOSX/ or the link
    assert files == sorted(files, key=lambda f: [(part.casefold(), part) for part in Path(f).parts])


def test_the_folder_is_never_modified(zoo) -> None:
    _, _, before, after = zoo
    assert after == before


def test_usable_paths_are_absolute_sorted_and_exclude_rejected(zoo) -> None:
    folder, report, _, _ = zoo
    usable = report.usable()
    assert usable == sorted(usable) and all(p.is_absolute() for p in usable)
    expected = {name for name, (status, _) in EXPECTED.items() if status in ("accepted", "fixed", "warning")}
    assert {p.relative_to(folder.resolve()).as_posix() for p in usable} == expected
    assert {e.file for e in report.rejected()} == {n for n, (s, _) in EXPECTED.items() if s == "rejected"}


def test_upscale_warning_and_min_side(tmp_path: Path) -> None:
    folder = tmp_path / "small"
    folder.mkdir()
    pattern(40, (300, 200)).save(folder / "small.png")
    report = check_folder(folder, resolution=512)
    assert report.entries[0].status == "warning"
    assert "will be upscaled from 300x200" in report.entries[0].reason
    assert check_folder(folder, resolution=512, min_side=250).entries[0].status == "rejected"
    assert check_folder(folder, resolution=200).entries[0].status == "accepted"


def test_format_and_json(zoo) -> None:
    _, report, _, _ = zoo
    text = report.format()
    lines = text.splitlines()
    assert len(lines) == len(report.entries) + 2
    counts = report.counts()
    summary = lines[-1]
    for status, n in counts.items():
        assert f"{n} {status}" in summary
    file_columns = {line.index(e.file) for line, e in zip(lines[1:-1], report.entries, strict=True)}
    assert file_columns == {12}  # status padded to one width, so file names line up
    rows = report.to_json()
    assert rows[0] == {
        "file": report.entries[0].file,
        "status": report.entries[0].status,
        "reason": report.entries[0].reason,
    }
    assert {tuple(r) for r in rows} == {("file", "status", "reason")}


# ---------------------------------------------------------------------------- what training sees


def test_exif_orientation_makes_the_photo_upright(zoo) -> None:
    folder, _, _, _ = zoo
    lossless = np.asarray(load_image(folder / "rotated.webp"))
    assert np.array_equal(lossless, np.asarray(pattern(32, (96, 64))))
    upright = np.asarray(pattern(1, (96, 64)), dtype=np.int16)
    jpeg = np.asarray(load_image(folder / "phone_sideways.jpg"), dtype=np.int16)
    assert jpeg.shape == upright.shape
    assert np.abs(jpeg - upright).mean() < 4  # JPEG noise only
    assert np.abs(jpeg - upright[::-1, ::-1]).mean() > 40  # the wrong way up is far off


def test_transparency_becomes_the_background_never_black(zoo) -> None:
    folder, _, _, _ = zoo
    for name in ("transparent.png", "palette_transparent.png"):
        region = (slice(None), slice(40, None)) if name == "transparent.png" else (slice(None), slice(0, 30))
        white = np.asarray(load_image(folder / name))[region]
        assert (white == 255).all(), name
        custom = np.asarray(load_image(folder / name, alpha_background=(0, 128, 255)))[region]
        assert (custom == (0, 128, 255)).all(), name
    opaque_half = np.asarray(load_image(folder / "transparent.png"))[:, :40]
    assert np.array_equal(opaque_half, np.asarray(pattern(7))[:, :40])


def test_every_usable_image_loads_as_rgb(zoo) -> None:
    _, report, _, _ = zoo
    for path in report.usable():
        image = load_image(path)
        assert image.mode == "RGB", path


def test_sixteen_bit_is_scaled_not_clipped(zoo) -> None:
    folder, _, _, _ = zoo
    ramp = (np.arange(80 * 72, dtype=np.uint32).reshape(72, 80) * 11 % 65536).astype(np.float64)
    loaded = np.asarray(load_image(folder / "sixteen_bit.png"))
    assert loaded.shape == (72, 80, 3)
    assert np.abs(loaded[..., 0] - ramp / 257).max() <= 0.5 + 1e-9


def test_cmyk_and_animation_first_frame(zoo) -> None:
    folder, _, _, _ = zoo
    cmyk = np.asarray(load_image(folder / "cmyk.jpg"), dtype=np.int16)
    assert np.abs(cmyk - np.asarray(pattern(2), dtype=np.int16)).mean() < 8
    first = np.asarray(load_image(folder / "animated.webp"))
    assert np.array_equal(first, np.asarray(pattern(12)))


def test_truncation_is_found_by_decoding_with_truncated_loading_off() -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    ("name", "phrase"),
    [
        ("notes.jpg", "a text file"),
        ("truncated.jpg", "truncated"),
        ("bomb.png", "decompression-bomb"),
        ("missing.png", "does not exist"),
    ],
)
def test_load_image_names_the_file_it_cannot_use(zoo, name: str, phrase: str) -> None:
    folder, _, _, _ = zoo
    with pytest.raises(BoothkitError) as caught:
        load_image(folder / name)
    assert str(folder / name) in caught.value.message and phrase in caught.value.message


# ---------------------------------------------------------------------------- bombs and HEIC


def _forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def refuse(self: Image.Image, *args: object, **kwargs: object) -> None:
        calls.append(str(getattr(self, "filename", "?")))
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", refuse)
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    return calls


def test_bomb_is_rejected_from_its_header_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "bombs"
    folder.mkdir()
    (folder / "huge.png").write_bytes(bomb_png(30000, 30000))  # > 2x the limit: Pillow refuses at open
    calls = _forbid_decoding(monkeypatch)
    report = check_folder(folder)
    assert report.entries[0].status == "rejected" and "not decoded" in report.entries[0].reason
    assert calls == []


def test_bomb_between_one_and_two_limits_is_rejected_by_our_header_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "bombs"
    folder.mkdir()
    pattern(31, (200, 200)).save(folder / "big.png")  # 40000 px, with the limit at 30000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30000)
    calls = _forbid_decoding(monkeypatch)
    report = check_folder(folder, resolution=64)
    assert report.entries[0].reason.startswith("declares 200x200 pixels")
    assert calls == []


def test_heic_with_pillow_heif_registers_its_opener_lazily(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "heic"
    folder.mkdir()
    (folder / "IMG_1234.HEIC").write_bytes(HEIC_BYTES)
    registered: list[bool] = []
    fake = types.ModuleType("pillow_heif")
    fake.register_heif_opener = lambda: registered.append(True)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pillow_heif", fake)
    monkeypatch.setattr(images, "_heif_registered", None)
    entry = check_folder(folder).entries[0]
    assert registered == [True]
    assert entry.status == "rejected" and "pip install" not in entry.reason  # the fake cannot decode it
    check_folder(folder)
    assert registered == [True]  # once per process, not per file


def test_heic_without_pillow_heif_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "photo").write_bytes(HEIC_BYTES)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)
    with pytest.raises(BoothkitError) as caught:
        load_image(tmp_path / "photo")
    assert "pip install pillow-heif" in str(caught.value)


# ---------------------------------------------------------------------------- helpers


def test_perceptual_hash_separates_distinct_photos_and_matches_copies() -> None:
    base = pattern(50, (128, 96))
    smaller = base.resize((64, 48), Image.Resampling.LANCZOS)
    brighter = Image.fromarray(np.clip(np.asarray(base, dtype=np.int16) + 12, 0, 255).astype(np.uint8))
    assert hamming(perceptual_hash(base), perceptual_hash(smaller)) <= images.DUPLICATE_DISTANCE
    assert hamming(perceptual_hash(base), perceptual_hash(brighter)) <= images.DUPLICATE_DISTANCE
    for seed in range(51, 56):
        assert (
            hamming(perceptual_hash(base), perceptual_hash(pattern(seed, (128, 96))))
            > images.DUPLICATE_DISTANCE
        )


def test_check_folder_refuses_a_missing_folder_or_a_file(tmp_path: Path) -> None:
    with pytest.raises(BoothkitError, match="does not exist") as caught:
        check_folder(tmp_path / "nope")
    assert str(tmp_path / "nope") in caught.value.message
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(BoothkitError, match="is not a folder"):
        check_folder(tmp_path / "a.png")


def test_empty_folder_reports_nothing(tmp_path: Path) -> None:
    report = check_folder(tmp_path)
    assert report.entries == () and report.usable() == []
    assert report.format().splitlines()[-1].startswith("0 entries")


@pytest.mark.parametrize(
    ("text", "rgb"),
    [
        ("white", (255, 255, 255)),
        ("Black", (0, 0, 0)),
        ("#FF8000", (255, 128, 0)),
        ("#f80", (255, 136, 0)),
        ("10, 20,30", (10, 20, 30)),
        ("red", (255, 0, 0)),
    ],
)
def test_parse_color(text: str, rgb: tuple[int, int, int]) -> None:
    assert parse_color(text) == rgb


@pytest.mark.parametrize("text", ["", "blurple", "#12345", "1,2", "256,0,0", "-1,0,0", "#gggggg"])
def test_parse_color_names_the_bad_value(text: str) -> None:
    with pytest.raises(BoothkitError) as caught:
        parse_color(text)
    assert repr(text) in caught.value.message


def test_resize_and_crop_covers_then_crops() -> None:
    landscape = pattern(60, (300, 200))
    out, (top, left) = resize_and_crop(landscape, (64, 64))
    assert out.size == (64, 64) and top == 0 and left == (96 - 64) // 2
    portrait, (top, left) = resize_and_crop(pattern(61, (200, 300)), (64, 48))
    assert portrait.size == (64, 48) and left == 0 and top == (96 - 48) // 2
    crops = {resize_and_crop(landscape, (64, 64), crop="random", rng=random.Random(s))[1] for s in range(20)}
    assert all(t == 0 and 0 <= lft <= 32 for t, lft in crops) and len(crops) > 1
    again = resize_and_crop(landscape, (64, 64), crop="random", rng=random.Random(3))
    assert again[1] == resize_and_crop(landscape, (64, 64), crop="random", rng=random.Random(3))[1]
    exact, offset = resize_and_crop(pattern(62, (64, 64)), (64, 64))
    assert offset == (0, 0) and np.array_equal(np.asarray(exact), np.asarray(pattern(62, (64, 64))))
    upscaled, _ = resize_and_crop(pattern(63, (20, 10)), (64, 64))
    assert upscaled.size == (64, 64)


# ---------------------------------------------------------------------------- real photos


def _subjects() -> list[Path]:
    return sorted(p for p in SHARED.iterdir() if p.is_dir()) if SHARED.is_dir() else []


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared dataset not found at {SHARED}")
@pytest.mark.parametrize("subject", _subjects(), ids=lambda p: p.name)
def test_real_dreambooth_photos_have_no_rejected_image(subject: Path) -> None:
    report = check_folder(subject, resolution=512)
    assert report.rejected() == [], report.format()
    assert len(report.usable()) >= 3
