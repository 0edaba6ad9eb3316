"""Which images each micro-batch holds: a pure function of (seed, position), so a resumed run
replays exactly the batches an uninterrupted one would have seen."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from boothkit.data.buckets import assign_bucket, default_step, make_buckets
from boothkit.data.cache import CachedImage
from boothkit.data.images import load_image
from boothkit.families import Family


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A fresh permutation of n items per epoch, a pure function of (seed, epoch): resumable."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def take(n: int, seed: int, position: int, count: int) -> list[int]:
    """Items position..position+count of the endless stream of per-epoch permutations."""
    out = []
    for pos in range(position, position + count):
        out.append(epoch_order(n, seed, pos // n)[pos % n])
    return out


def batch_latents(
    items: list[CachedImage], model: Family, generator: torch.Generator, flip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample latents (B, C, h, w) from the cached posteriors; returns them with the time ids (B, k)."""
    means, stds, ids = [], [], []
    for item in items:
        use_flip = flip and item.flipped_mean is not None and bool(torch.rand((), generator=generator) < 0.5)
        means.append(item.flipped_mean if use_flip else item.mean)
        stds.append(item.flipped_std if use_flip else item.std)
        ids.append(item.flipped_time_ids if use_flip else item.time_ids)
    mean, std = torch.stack(means), torch.stack(stds)  # type: ignore[arg-type]
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    return model.scale_latents(mean + std * eps), torch.stack(ids)  # type: ignore[arg-type]


def bucket_sizes(
    images: list[Path], resolution: int, background: tuple[int, int, int], *, multiple: int = 8
) -> list[tuple[int, int]]:
    """Each photo's aspect-ratio bucket (width, height), from its upright size; each side a multiple
    of ``multiple`` (a divisor of ``resolution``: what the model's latents need, 16 for Flux's packed
    2x2 tokens)."""
    buckets = make_buckets(resolution, step=math.lcm(default_step(resolution), multiple))
    return [assign_bucket(*load_image(p, alpha_background=background).size, buckets) for p in images]
