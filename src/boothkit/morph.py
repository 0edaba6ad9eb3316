"""Morph animation: a seamless loop through the images of K seeds, made in latent space.

Each keyframe is the initial noise of one seed (the same tensor `boothkit generate --seed s`
starts from). Frames between keyframes start from a spherical interpolation (SLERP) of their
noises and are denoised with one prompt embedding, so only the starting point moves and the
picture flows from one seed's image to the next. SLERP rather than a straight line: Gaussian noise
in many dimensions lies on a thin shell of radius ~sqrt(dim), and the midpoint of a straight line
between two such points has ~0.71 of that norm, which the model renders as a washed-out blur;
SLERP stays on the shell.

The path visits keyframe 0, 1, ..., K-1 and goes back to 0. Frame i of n sits at i / n of the way
round, so the frame that would follow the last one is frame 0 exactly and the loop has no seam
and no repeated frame.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from boothkit.adapters import Adapter
from boothkit.errors import BoothkitError
from boothkit.families import Family
from boothkit.io import atomic_write
from boothkit.pipelines import Sampler, check_scheduler

if TYPE_CHECKING:
    from PIL import Image

FORMATS = (".gif", ".mp4")
GIF_MAX_FPS = 50  # GIF players show frames shorter than 20 ms for 100 ms


# ----------------------------------------------------------------------------- the math (pure)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, *, dot_threshold: float = 0.9995) -> torch.Tensor:
    """Spherical linear interpolation from `a` (t=0) to `b` (t=1), treating each as one vector.

    sin((1-t)θ)/sin θ · a + sin(tθ)/sin θ · b, θ the angle between them. For unit vectors every
    result is a unit vector; for noise of similar norms the norm stays on the shell. When the
    vectors are (nearly) parallel or opposite, sin θ is ~0 and the formula divides by ~0, so it
    falls back to the straight line, which there is equally short and numerically safe. The
    endpoints are returned exactly, so keyframes reproduce their seed's image bit for bit.
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp needs tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    a64, b64 = a.double(), b.double()
    norms = a64.norm() * b64.norm()
    dot = float((a64.flatten() @ b64.flatten()) / norms) if norms > 0 else 1.0
    if abs(dot) > dot_threshold:
        out = (1 - t) * a64 + t * b64
    else:
        theta = math.acos(max(-1.0, min(1.0, dot)))
        sin_theta = math.sin(theta)
        out = (math.sin((1 - t) * theta) / sin_theta) * a64 + (math.sin(t * theta) / sin_theta) * b64
    return out.to(a.dtype)


def frame_count(duration: float, fps: float) -> int:
    """Frames in a loop of `duration` seconds at `fps` (at least one)."""
    if duration <= 0 or fps <= 0:
        raise BoothkitError(f"--duration {duration} and --fps {fps} must both be positive")
    return max(1, round(duration * fps))


def cycle_position(index: int, n_frames: int, n_keys: int) -> tuple[int, int, float]:
    """(from keyframe, to keyframe, t) of frame `index` on a loop of `n_frames` through `n_keys`.

    Frame i sits at i / n_frames of the way round; integer arithmetic keeps keyframe hits exact
    (t == 0.0) and makes frame n_frames land on keyframe 0 again, which is what makes the loop
    seamless.
    """
    if n_frames <= 0 or n_keys <= 0:
        raise ValueError("n_frames and n_keys must be positive")
    segment, remainder = divmod(index * n_keys, n_frames)
    start = segment % n_keys
    return start, (start + 1) % n_keys, remainder / n_frames


def keyframe_latents(
    seeds: Sequence[int], shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> list[torch.Tensor]:
    """The initial noise of each seed, drawn as diffusers draws it for `generator=manual_seed(seed)`."""
    return [
        torch.randn(tuple(shape), generator=torch.Generator("cpu").manual_seed(s), dtype=dtype) for s in seeds
    ]


def frame_latents(
    keys: Sequence[torch.Tensor], n_frames: int, indices: Iterable[int] | None = None
) -> list[torch.Tensor]:
    """The starting latents of frames `indices` (default: all `n_frames`) on the loop through `keys`."""
    if len(keys) < 2:
        raise ValueError("a morph needs at least two keyframes")
    chosen = range(n_frames) if indices is None else indices
    out = []
    for i in chosen:
        start, end, t = cycle_position(i, n_frames, len(keys))
        out.append(slerp(keys[start], keys[end], t))
    return out


def gif_durations(n_frames: int, fps: float) -> list[int]:
    """Per-frame durations in ms, multiples of 10 (GIF stores centiseconds), that add up to the
    loop's true length: 30 fps alternates 30 and 40 ms instead of playing 10% fast at 30 ms."""
    edges = [round(i * 100 / fps) * 10 for i in range(n_frames + 1)]
    return [max(10, b - a) for a, b in zip(edges, edges[1:], strict=False)]


# ----------------------------------------------------------------------------- rendering


@torch.no_grad()
def render_frames(
    family: Family,
    pipe: Any,
    prompt: str,
    latents: Sequence[torch.Tensor],
    *,
    negative: str = "",
    steps: int = 30,
    guidance: float = 7.5,
    width: int,
    height: int,
    noise_seed: int = 0,
    batch_size: int = 1,
    progress: bool = False,
) -> list[Image.Image]:
    """Denoise each starting latent with the same prompt embedding.

    Ancestral schedulers add noise while sampling; every frame gets the same such noise (a
    generator seeded with `noise_seed` per image), so it does not flicker from frame to frame.
    """
    if batch_size <= 0:
        raise BoothkitError(f"--batch-size {batch_size} must be positive")
    embeds = family.prompt_embeddings(pipe, prompt, negative, guidance)
    frames: list[Image.Image] = []
    with tqdm(total=len(latents), disable=not progress, unit="frame", desc="morph") as bar:
        for start in range(0, len(latents), batch_size):
            chunk = list(latents[start : start + batch_size])
            n = len(chunk)
            images = pipe(
                **{k: v.repeat(n, *([1] * (v.dim() - 1))) for k, v in embeds.items()},
                latents=family.starting_latents(torch.cat(chunk)),
                num_inference_steps=steps,
                guidance_scale=guidance,
                width=width,
                height=height,
                generator=[torch.Generator("cpu").manual_seed(noise_seed) for _ in range(n)],
            ).images
            frames.extend(images)
            bar.update(n)
    return frames


# ----------------------------------------------------------------------------- writing


def check_output(path: str | Path, fps: float) -> Path:
    """Refuse an output we could not write before any frame is rendered."""
    dest = Path(path).expanduser()
    suffix = dest.suffix.lower()
    if suffix not in FORMATS:
        raise BoothkitError(f"--output {path}: write a .gif or .mp4 file", hint="e.g. --output morph.gif")
    if suffix == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise BoothkitError(
            f"--output {path}: writing MP4 needs imageio-ffmpeg, which is not installed",
            hint="use a .gif output, or `pip install imageio-ffmpeg`",
        )
    if suffix == ".gif" and fps > GIF_MAX_FPS:
        raise BoothkitError(
            f"--fps {fps:g}: GIF players show frames shorter than 20 ms for 100 ms, so the loop would crawl",
            hint=f"use --fps {GIF_MAX_FPS} or less, or an .mp4 output",
        )
    return dest


def write_gif(frames: Sequence[Image.Image], path: str | Path, fps: float) -> Path:
    """An endlessly looping GIF (loop=0), atomically. Pillow merges identical consecutive frames
    into one longer frame, which plays the same."""
    if not frames:
        raise BoothkitError("no frames to write")
    first, rest = frames[0], list(frames[1:])

    def write(tmp: Path) -> None:
        first.save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=rest,
            loop=0,
            duration=gif_durations(len(frames), fps),
        )

    return atomic_write(path, write)


def write_mp4(frames: Sequence[Image.Image], path: str | Path, fps: float) -> Path:
    """H.264 MP4 through imageio-ffmpeg (yuv420p, which every player reads), atomically."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise BoothkitError(
            "writing MP4 needs imageio-ffmpeg, which is not installed",
            hint="use a .gif output, or `pip install imageio-ffmpeg`",
        ) from None
    if not frames:
        raise BoothkitError("no frames to write")

    def write(tmp: Path) -> None:
        try:
            writer = imageio_ffmpeg.write_frames(
                str(tmp),
                frames[0].size,
                fps=float(fps),
                codec="libx264",
                quality=8,
                macro_block_size=8,  # SD sizes are multiples of 8: never rescaled
                output_params=["-f", "mp4"],  # the temporary name has no .mp4 for ffmpeg to go by
            )
            writer.send(None)
            for frame in frames:
                writer.send(np.ascontiguousarray(np.asarray(frame.convert("RGB"))))
            writer.close()
        except (OSError, RuntimeError) as e:
            raise BoothkitError(
                f"ffmpeg could not write {path}: {str(e).splitlines()[0]}", hint="use a .gif output instead"
            ) from None
        if tmp.stat().st_size == 0:
            raise BoothkitError(f"ffmpeg wrote nothing to {path}", hint="use a .gif output instead")

    return atomic_write(path, write)


def save_animation(frames: Sequence[Image.Image], path: str | Path, fps: float) -> Path:
    dest = check_output(path, fps)
    return write_mp4(frames, dest, fps) if dest.suffix.lower() == ".mp4" else write_gif(frames, dest, fps)


# ----------------------------------------------------------------------------- the whole thing


@dataclass(frozen=True)
class MorphResult:
    path: Path
    n_frames: int
    seeds: tuple[int, ...]
    fps: float
    width: int
    height: int


def morph_seeds(seed: int, keyframes: int, seeds: Sequence[int] | None = None) -> list[int]:
    """`--seeds` as given, else `keyframes` consecutive seeds from `seed`."""
    chosen = list(seeds) if seeds else list(range(seed, seed + keyframes))
    if len(chosen) < 2:
        raise BoothkitError(
            f"a morph needs at least two keyframes (got {len(chosen)})", hint="--keyframes 5 or --seeds 1 2 3"
        )
    return chosen


def morph(
    model: str,
    prompt: str,
    *,
    adapters: Sequence[Adapter] = (),
    seeds: Sequence[int],
    duration: float = 15.0,
    fps: float = 30.0,
    negative: str = "",
    steps: int = 30,
    guidance: float | None = None,
    width: int | None = None,
    height: int | None = None,
    scheduler: str | None = None,
    device: str = "cpu",
    output: str | Path = "morph.gif",
    batch_size: int = 1,
    allow_pickle: bool = False,
    model_config: str | None = None,
    progress: bool = True,
) -> MorphResult:
    """Render a seamless loop through the images of `seeds` and write it as GIF or MP4.

    The defaults (5 keyframes, 15 s at 30 fps = 450 frames) make a smooth loop for sharing; for a
    quick look, `fps=4, duration=2` renders 8 frames.
    """
    dest = check_output(output, fps)
    n_frames = frame_count(duration, fps)
    seeds = list(seeds)
    if len(seeds) < 2:
        raise BoothkitError(f"a morph needs at least two keyframes (got {len(seeds)})", hint="--seeds 1 2 3")
    if n_frames < len(seeds):
        raise BoothkitError(
            f"{duration:g} s at {fps:g} fps is {n_frames} frames, fewer than the {len(seeds)} keyframes",
            hint="raise --duration or --fps, or use fewer keyframes",
        )
    if steps <= 0:
        raise BoothkitError(f"--steps {steps} must be positive")
    check_scheduler(scheduler)
    sampler = Sampler.open(
        model, scheduler=scheduler, device=device, allow_pickle=allow_pickle, model_config=model_config
    )
    pipe = sampler.use(adapters, prompt)  # run folders, LoRA files and training checkpoints alike
    family = sampler.family
    width, height = sampler.size(width, height)
    scale = sampler.guidance(guidance)
    factor = family.vae_scale_factor
    shape = (1, int(family.vae.config.latent_channels), height // factor, width // factor)
    latents = frame_latents(keyframe_latents(seeds, shape), n_frames)
    frames = render_frames(
        family,
        pipe,
        prompt,
        latents,
        negative=negative,
        steps=steps,
        guidance=scale,
        width=width,
        height=height,
        noise_seed=seeds[0],
        batch_size=batch_size,
        progress=progress,
    )
    path = save_animation(frames, dest, fps)
    return MorphResult(path, n_frames, tuple(seeds), fps, width, height)


__all__ = [
    "MorphResult",
    "cycle_position",
    "frame_count",
    "frame_latents",
    "gif_durations",
    "keyframe_latents",
    "morph",
    "morph_seeds",
    "render_frames",
    "save_animation",
    "slerp",
    "write_gif",
    "write_mp4",
]
