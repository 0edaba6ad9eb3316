"""Captions: per-image prompts from `name.txt` sidecars or a Hugging Face `metadata.jsonl`.

Without captions every instance photo trains on the same prompt ("a photo of {token} {class_noun}").
With them, each photo can say what else is in it ("... on a beach"), so the token does not absorb
the background. Captions may use {token} and {class_noun} like the prompt template does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath

from boothkit.data.images import CAPTION_SUFFIX, COMPANION_SUFFIXES, METADATA_FILE, SYSTEM_FOLDERS
from boothkit.errors import BoothkitError
from boothkit.templates import names_token, render_prompt


def _clean(text: str) -> str:
    """One line, single-spaced: a caption file may wrap lines or end with a newline."""
    return " ".join(text.split())


def _visible_files(root: Path) -> Iterator[Path]:
    """Files under root, skipping hidden and system folders and hidden files, as check_folder does."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d.lower() not in SYSTEM_FOLDERS]
        for name in filenames:
            if not name.startswith("."):
                yield Path(dirpath) / name


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: Windows editors prepend a BOM
    except UnicodeDecodeError:
        raise BoothkitError(f"{path} is not UTF-8 text", hint="save the caption file as UTF-8") from None
    except OSError as e:
        raise BoothkitError(f"{path} cannot be read: {e.strerror or e}") from None


def _metadata_row(meta: Path, number: int, line: str) -> tuple[str, str]:
    """(file_name, text) of one metadata.jsonl line; BoothkitError naming the file and line."""
    where = f"{meta}, line {number}"
    expected = 'expected {"file_name": "photo.jpg", "text": "a photo of {token} {class_noun}"}'
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise BoothkitError(f"{where} is not valid JSON ({e.msg})", hint=expected) from None
    if not isinstance(row, dict):
        raise BoothkitError(f"{where} is not a JSON object", hint=expected)
    for key in ("file_name", "text"):
        if not isinstance(row.get(key), str):
            problem = "has no" if key not in row else "has a non-string"
            raise BoothkitError(f'{where} {problem} "{key}"', hint=expected)
    name = PurePosixPath(row["file_name"].replace("\\", "/")).as_posix()
    return name, row["text"]


def _metadata_captions(root: Path) -> dict[str, str]:
    """Captions from metadata.jsonl at the folder root (the Hugging Face imagefolder convention)."""
    meta = root / METADATA_FILE
    if not meta.is_file():
        return {}
    captions: dict[str, str] = {}
    lines_of: dict[str, int] = {}
    for number, line in enumerate(_read_text(meta).splitlines(), start=1):
        if not line.strip():
            continue
        name, text = _metadata_row(meta, number, line)
        if name in lines_of:
            raise BoothkitError(
                f"{meta}, line {number}: {name} already has a caption on line {lines_of[name]}",
                hint="keep one line per image",
            )
        lines_of[name] = number
        if _clean(text):
            captions[name] = _clean(text)
    return captions


def _sidecar_captions(root: Path) -> dict[str, str]:
    """Captions from `name.txt` beside `name.<ext>` (any case of .txt), keyed by the image's path."""
    by_folder: dict[Path, list[Path]] = {}
    for path in _visible_files(root):
        by_folder.setdefault(path.parent, []).append(path)
    captions: dict[str, str] = {}
    for files in by_folder.values():
        sidecars = {p.stem: p for p in files if p.suffix.lower() == CAPTION_SUFFIX}
        for image in files:
            if image.suffix.lower() in COMPANION_SUFFIXES or image.name.lower() == METADATA_FILE:
                continue
            sidecar = sidecars.get(image.stem)
            if sidecar is not None and (text := _clean(_read_text(sidecar))):
                captions[image.relative_to(root).as_posix()] = text
    return captions


def read_captions(folder: str | Path) -> dict[str, str]:
    """Captions keyed by image path relative to `folder` (posix), as written (not yet rendered).

    From `name.txt` sidecars beside `name.jpg` (same stem), and from one `metadata.jsonl` at the
    folder root with lines {"file_name": ..., "text": ...}. When both caption the same image the
    sidecar wins: it sits next to the photo, so it is the more deliberate of the two. Empty
    captions are skipped (the image gets the template). A malformed metadata.jsonl line raises
    BoothkitError naming the file and line number.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise BoothkitError(f"{root} is not a folder", hint="pass the folder that holds your photos")
    return {**_metadata_captions(root), **_sidecar_captions(root)}


def _relative(path: Path, folder: Path) -> str | None:
    """path relative to folder (posix), comparing absolute forms; None when it lies outside."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(folder))
    outside = rel == os.pardir or rel.startswith(os.pardir + os.sep)
    return None if outside else Path(rel).as_posix()


def check_prompts_name_token(image_paths: Sequence[Path], folder: Path, *, template: str, token: str) -> None:
    """Refuse instance prompts that do not name the token (``{token}``, or the word as prompts will
    hold it: ``sks``, or ``<sks>`` for textual inversion and pivotal tuning). A photo trained
    without it teaches the class noun, not the identifier, the subject's look. Checked on the
    templates, before any work."""
    captions = read_captions(folder)
    how = f"{{token}} or {token}"
    for path in image_paths:
        rel = _relative(Path(path), Path(folder))
        caption = captions.get(rel) if rel is not None else None
        if caption is None:
            if not names_token(template, token):
                raise BoothkitError(
                    f"--instance-prompt {template!r} does not name the token ({how})",
                    hint="write {token} where the subject goes, e.g. 'a photo of {token} {class_noun}'",
                )
        elif not names_token(caption, token):
            raise BoothkitError(
                f"caption of {rel} ({caption!r}) does not name the token ({how})",
                hint="write {token} where the caption names the subject, "
                "e.g. 'a photo of {token} {class_noun} on a beach'",
            )


def check_captions_omit_token(folder: Path, token: str) -> None:
    """Refuse class-image captions that name the token: the prior loss would bind it to every member
    of the class, the opposite of what the class images are for."""
    for rel, caption in sorted(read_captions(folder).items()):
        if names_token(caption, token):
            raise BoothkitError(
                f"caption of class image {rel} ({caption!r}) names the token {token}: class images teach "
                "what any member of the class looks like",
                hint="leave {token} out of class-image captions",
            )


def instance_prompts(
    image_paths: Sequence[Path], folder: Path, *, template: str, token: str, class_noun: str | None
) -> list[str]:
    """One prompt per image: its caption with {token}/{class_noun} substituted, else the template."""
    captions = read_captions(folder)
    fallback = render_prompt(template, token=token, class_noun=class_noun)
    prompts = []
    for path in image_paths:
        rel = _relative(Path(path), Path(folder))
        caption = captions.get(rel) if rel is not None else None
        if caption is None:
            prompts.append(fallback)
            continue
        try:
            prompts.append(render_prompt(caption, token=token, class_noun=class_noun))
        except BoothkitError as e:
            raise BoothkitError(f"caption of {rel}: {e.message}", hint=e.hint) from None
    return prompts
