"""Labelled image grids and a loss-curve plot, drawn with Pillow alone."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

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


def line_plot(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str = "",
    size: tuple[int, int] = (640, 360),
    log_y: bool = False,
) -> Image.Image:
    """A plain line chart of (x, y) series with axes, ticks and a legend (e.g. the loss curve)."""
    colors = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
    width, height = size
    margin_l, margin_r, margin_t, margin_b = 60, 16, 28, 36
    canvas = Image.new("RGB", size, _BG)
    draw = ImageDraw.Draw(canvas)
    font = _font(11)
    points = [(x, y) for s in series.values() for x, y in s if math.isfinite(y) and (y > 0 or not log_y)]
    if not points:
        draw.text((margin_l, height // 2), "no data", fill=_FG, font=font)
        return canvas

    def ty(v: float) -> float:
        return math.log10(v) if log_y else v

    xs, ys = [p[0] for p in points], [ty(p[1]) for p in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    pw, ph = width - margin_l - margin_r, height - margin_t - margin_b

    def to_px(x: float, y: float) -> tuple[float, float]:
        return margin_l + (x - x0) / (x1 - x0) * pw, margin_t + (1 - (ty(y) - y0) / (y1 - y0)) * ph

    draw.rectangle([margin_l, margin_t, margin_l + pw, margin_t + ph], outline=_FG)
    for k in range(5):
        fy = y0 + (y1 - y0) * k / 4
        py = margin_t + (1 - k / 4) * ph
        label = f"{10**fy:.3g}" if log_y else f"{fy:.3g}"
        draw.text((4, py - 6), label, fill=_FG, font=font)
        draw.line([margin_l - 3, py, margin_l, py], fill=_FG)
        fx = x0 + (x1 - x0) * k / 4
        px = margin_l + k / 4 * pw
        draw.text((px - 10, margin_t + ph + 6), f"{fx:.0f}", fill=_FG, font=font)
    draw.text((margin_l, 6), title, fill=_FG, font=font)
    for i, (name, s) in enumerate(series.items()):
        color = colors[i % len(colors)]
        pts = [to_px(x, y) for x, y in s if math.isfinite(y) and (y > 0 or not log_y)]
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        lx, ly = width - margin_r - 150, margin_t + 4 + 14 * i
        draw.line([lx, ly + 7, lx + 14, ly + 7], fill=color, width=2)
        draw.text((lx + 18, ly), name, fill=color, font=font)
    return canvas
