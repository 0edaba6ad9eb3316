"""Captions: `name.txt` sidecars or a `metadata.jsonl`, with {token} and {class_noun} substituted."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Sequence
from pathlib import Path

from boothkit.errors import BoothkitError


def read_captions(folder: str | Path) -> dict[str, str]:
    """Captions keyed by image path relative to folder; a sidecar beats metadata.jsonl."""
    root = Path(folder)
    captions: dict[str, str] = {}
    meta = root / "metadata.jsonl"
    if meta.is_file():
        for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                captions[str(row["file_name"])] = str(row["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise BoothkitError(
                    f'{meta}, line {n}: expected {{"file_name": ..., "text": ...}}, got {line[:80]!r}'
                ) from None
    for txt in root.rglob("*.txt"):
        text = txt.read_text(encoding="utf-8").strip()
        if not text:
            continue
        for sibling in txt.parent.glob(txt.stem + ".*"):
            if sibling.suffix.lower() != ".txt":
                captions[sibling.relative_to(root).as_posix()] = text
    return captions


def render_prompt(template: str, *, token: str, class_noun: str | None) -> str:
    names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    unknown = names - {"token", "class_noun"}
    if unknown:
        raise BoothkitError(
            f"prompt {template!r} uses unknown placeholder {{{sorted(unknown)[0]}}}",
            hint="only {token} and {class_noun} are substituted",
        )
    text = template.format(token=token, class_noun=class_noun or "")
    return re.sub(r"\s+", " ", text).strip()


def instance_prompts(
    image_paths: Sequence[Path], folder: Path, *, template: str, token: str, class_noun: str | None
) -> list[str]:
    captions = read_captions(folder)
    out = []
    for path in image_paths:
        rel = Path(path).relative_to(folder).as_posix()
        caption = captions.get(rel)
        out.append(render_prompt(caption if caption else template, token=token, class_noun=class_noun))
    return out
