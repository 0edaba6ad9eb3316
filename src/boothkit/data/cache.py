"""Latent and prompt-embedding caches: the VAE and a frozen text encoder run once, not every step.

DreamBooth trains on a handful of images for hundreds of steps, so encoding each image through the
VAE every step (as the common reference scripts do) repeats the same work hundreds of times. We
store each image's latent posterior (mean, std) once, for both flips when flipping is on, and draw
`mean + std * noise` per step, which is exactly the distribution the per-step encode samples from.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from boothkit.data.images import load_image, resize_and_crop
from boothkit.families import Conditioning, Family


@dataclass
class CachedImage:
    """One training image as the loop sees it. Tensors are (C, h, w) latent statistics."""

    path: Path
    prompt: str
    is_prior: bool
    mean: torch.Tensor
    std: torch.Tensor
    time_ids: torch.Tensor
    flipped_mean: torch.Tensor | None = None
    flipped_std: torch.Tensor | None = None
    flipped_time_ids: torch.Tensor | None = None
    size: tuple[int, int] = (0, 0)  # (width, height) in pixels


def to_pixels(image) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """PIL RGB -> (3, H, W) float in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@torch.no_grad()
def encode_images(
    model: Family,
    paths: list[Path],
    prompts: list[str],
    *,
    is_prior: bool,
    resolution: int,
    flip: bool,
    crop: str = "center",
    alpha_background: tuple[int, int, int] = (255, 255, 255),
    seed: int = 0,
    batch_size: int = 8,
    sizes: list[tuple[int, int]] | None = None,
) -> list[CachedImage]:
    """Load, crop and VAE-encode every image once (and its mirror image when `flip`).

    `sizes` gives each image's (width, height) training size (aspect-ratio buckets); by default
    every image is cropped to a `resolution` square.
    """
    rng = random.Random(seed)
    targets = sizes or [(resolution, resolution)] * len(paths)
    items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    for path, (w, h) in zip(paths, targets, strict=True):
        image = load_image(path, alpha_background=alpha_background)
        cropped, (top, left) = resize_and_crop(
            image, (w, h), crop="random" if crop == "random" else "center", rng=rng
        )
        original = (image.height, image.width)
        time_ids = model.time_ids(original, (top, left), (h, w))
        flipped_time_ids = None
        if flip:
            # The mirrored crop starts where the original crop ended, seen from the other side.
            resized_w = max(w, round(image.width * max(w / image.width, h / image.height)))
            flipped_time_ids = model.time_ids(original, (top, resized_w - left - w), (h, w))
        items.append((to_pixels(cropped), time_ids, flipped_time_ids))

    cached: list[CachedImage | None] = [None] * len(items)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(targets):
        by_size.setdefault(size, []).append(i)
    for indices in by_size.values():  # images of one size encode together
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            pixels = torch.stack([items[i][0] for i in chunk])  # (b, 3, H, W)
            mean, std = model.encode_images(pixels)
            f_mean = f_std = None
            if flip:
                f_mean, f_std = model.encode_images(torch.flip(pixels, dims=[3]))
            for k, i in enumerate(chunk):
                cached[i] = CachedImage(
                    path=paths[i],
                    prompt=prompts[i],
                    is_prior=is_prior,
                    mean=mean[k].float().cpu(),
                    std=std[k].float().cpu(),
                    time_ids=items[i][1],
                    flipped_mean=None if f_mean is None else f_mean[k].float().cpu(),
                    flipped_std=None if f_std is None else f_std[k].float().cpu(),
                    flipped_time_ids=items[i][2],
                    size=targets[i],
                )
    return [c for c in cached if c is not None]


@torch.no_grad()
def encode_prompt_set(model: Family, prompts: list[str]) -> dict[str, Conditioning]:
    """Each distinct prompt encoded once (used while the text encoders are frozen)."""
    unique = sorted(set(prompts))
    cond = model.encode_prompts(unique)
    return {p: cond.select([i]).to("cpu") for i, p in enumerate(unique)}
