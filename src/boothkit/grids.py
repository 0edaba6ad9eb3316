"""Labelled image grids, drawn with Pillow alone."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

_PAD = 4
_BG = (255, 255, 255)
_FG = (20, 20, 20)


def _font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _wrap(
    text: str, width_px: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, draw: ImageDraw.ImageDraw
) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width_px or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines or [""]


def labelled_grid(
    rows: Sequence[Sequence[Image.Image]],
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    label_width: int = 160,
) -> Image.Image:
    """Images in a grid with row titles on the left, column titles on top and an optional title.

    Small images (e.g. 32 px from tiny models) are upscaled to at least 128 px with nearest
    neighbour so the grid stays legible and pixels stay honest.
    """
    if not rows or not rows[0]:
        raise ValueError("a grid needs at least one image")
    cell_w = max(im.width for r in rows for im in r)
    cell_h = max(im.height for r in rows for im in r)
    zoom = max(1, math.ceil(128 / max(cell_w, cell_h)))
    cell_w, cell_h = cell_w * zoom, cell_h * zoom
    font = _font(12)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = 14
    left = label_width if row_labels else 0
    col_lines = [_wrap(c, cell_w - 2 * _PAD, font, probe) for c in col_labels] if col_labels else []
    top = (max(len(c) for c in col_lines) * line_h + 2 * _PAD) if col_lines else 0
    title_h = line_h + 2 * _PAD if title else 0
    ncols = max(len(r) for r in rows)
    width = left + ncols * (cell_w + _PAD) + _PAD
    height = title_h + top + len(rows) * (cell_h + _PAD) + _PAD
    canvas = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((_PAD, _PAD), title, fill=_FG, font=font)
    for j, lines in enumerate(col_lines):
        for k, line in enumerate(lines):
            draw.text(
                (left + _PAD + j * (cell_w + _PAD), title_h + _PAD + k * line_h), line, fill=_FG, font=font
            )
    for i, row in enumerate(rows):
        y = title_h + top + _PAD + i * (cell_h + _PAD)
        if row_labels:
            for k, line in enumerate(
                _wrap(row_labels[i], label_width - 2 * _PAD, font, probe)[: cell_h // line_h]
            ):
                draw.text((_PAD, y + k * line_h), line, fill=_FG, font=font)
        for j, im in enumerate(row):
            im = im.convert("RGB")
            if zoom > 1:
                im = im.resize((im.width * zoom, im.height * zoom), Image.Resampling.NEAREST)
            canvas.paste(im, (left + _PAD + j * (cell_w + _PAD), y))
    return canvas
