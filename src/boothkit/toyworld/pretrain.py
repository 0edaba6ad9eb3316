"""Pretraining the toy-world base model: a tiny Stable Diffusion 1 that draws the world's captions.

The model has the real SD-1 architecture (AutoencoderKL, a cross-attention UNet2DConditionModel,
a CLIPTextModel and a CLIP BPE tokenizer), only small, and is written as an ordinary
StableDiffusionPipeline folder, so boothkit loads and fine-tunes it like any SD-1 checkpoint.

Recipe (:func:`pretrain`):

1. a CLIP-style BPE tokenizer trained on the world's captions; a few rare identifier words
   ("sks", "zwx", ...) are in its corpus so each is one piece, but no training caption uses them;
2. the VAE (scale factor 2: 48 px images, 24x24x4 latents), MSE + L1 + a tiny KL term, checked by
   decoding fresh renders and measuring them with the oracles;
3. UNet + text encoder together on the epsilon loss over scaled latents (SD's 1000-step
   scaled-linear DDPM schedule, min-SNR weighting, an EMA of the weights), captions with
   attributes left out at random (so short prompts such as "a photo of a star" mean something)
   and 10% empty captions (so classifier-free guidance works).

The rows of tokens no caption uses stay at their initial scale; ``rare_token_norm`` (or
``toyworld calibrate-tokens``) lifts them to the trained rows' norm, measured and not adopted
(BENCHMARKS.md, 2026-12-05: it helps one subject and hurts another, depending on the identifier).

Some (shape, colour) and (shape, background) pairs never occur in training
(:data:`HELD_OUT_COLORS`, :data:`HELD_OUT_BACKGROUNDS`); prompt fidelity is measured on those
combinations only: the share of generated images whose shape, colour, position and background
the oracle reads as the caption says.

Every ``eval_every`` steps the EMA model is evaluated, saved to ``output`` (fp16 safetensors) if
it is the best so far, and the log line appended to ``output/pretrain_log.txt``; an interrupted
run therefore leaves a usable model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from boothkit.io import require_empty_folder
from boothkit.losses import compute_snr, min_snr_weights, training_target
from boothkit.toyworld.oracles import measure
from boothkit.toyworld.render import coverage, placement, render, render_pattern
from boothkit.toyworld.scene import (
    BACKGROUND_PHRASES,
    BACKGROUNDS,
    COLORS,
    POSITION_PHRASES,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    caption,
    vocabulary,
)
from boothkit.toyworld.subjects import multicolor_paint

RESOLUTION = 48  # the oracles read 99% of 48 px renders right even at half resolution; 32 px: 58%
MAX_TOKENS = 32  # the longest caption is 19 tokens with its start and end markers
RARE_TOKENS: tuple[str, ...] = ("sks", "zwx", "ohwx", "phol", "bnha")
ATTRIBUTES = ("shape", "color", "position", "background")

# Combinations that pretraining never shows: one colour and one background per shape.
HELD_OUT_COLORS: dict[str, str] = {shape: COLORS[(3 * i + 1) % len(COLORS)] for i, shape in enumerate(SHAPES)}
HELD_OUT_BACKGROUNDS: dict[str, str] = {
    shape: BACKGROUNDS[(3 * i + 2) % len(BACKGROUNDS)] for i, shape in enumerate(SHAPES)
}


@dataclass
class PretrainSettings:
    """Everything that decides the model (the flags of ``boothkit toyworld pretrain``)."""

    steps: int = 3000
    vae_steps: int = 800
    batch_size: int = 32
    vae_batch_size: int = 32
    lr: float = 1e-3
    vae_lr: float = 1e-3
    width: int = 32  # channels of the first UNet block; the others are 2x, 3x (and 4x)
    # The defaults are v1's first phase. The shipped model (v4) continues v1 through a curriculum of
    # these fields (schedule, high_noise_share, high_noise_from, keep, ema_decay, pool, seed, lr,
    # multicolor_share, named_share, individuals, decoder_*): CURRICULA["v4"] below,
    # `toyworld pretrain --curriculum v4`; its log has each phase. levels=4 and pooled_text are an alternative layout,
    # measured on CPU in BENCHMARKS.md and not better at equal steps.
    levels: int = 3  # UNet resolutions: 3 is 24, 12, 6 latent pixels; 4 adds 3x3, the caption's grid
    pooled_text: bool = False  # the caption, attention-pooled, also joins the UNet's time embedding
    # Caption attention at the first (24 px) level too, where a subject's thin parts live (a star's
    # points, a 2 px rim): without it the caption reaches that level only through coarser features.
    # Continuing a model without it adds the blocks as identities (:func:`with_fine_attention`). Not
    # in the shipped model: 1,500 CPU steps continuing v3 kept its prompt fidelity (0.95) but LoRA
    # subject fidelity did not rise (0.60 against 0.71, BENCHMARKS.md); a GPU can train it longer.
    fine_attention: bool = False
    # "sd": Stable Diffusion's schedule and epsilon target (v1). "zero-snr": the same betas rescaled to
    # zero terminal SNR, a v target and trailing timesteps (Lin et al. 2024), so that sampling from
    # pure noise is what training saw at its last step (see noise_schedule).
    schedule: str = "sd"
    pool: int = 0  # renders encoded once and sampled from (0: render and encode every batch afresh)
    workers: int | None = None  # processes rendering the pool (0: render here; None: see pool_workers)
    text_width: int = 64
    caption_dropout: float = 0.1
    attribute_dropout: float = 0.15
    ema_decay: float = 0.995
    snr_gamma: float = 5.0
    # Share of each batch whose timesteps come from [high_noise_from, 1000) (the rest are uniform):
    # the steps where x_t shows nothing and the layout can come only from the caption. With the
    # zero-snr schedule, 1000 raw-weight steps at t=999 alone (share 1, from 999) are what taught the
    # model position words (BENCHMARKS.md); mixed timesteps did not in 1000 steps.
    high_noise_share: float = 0.0
    high_noise_from: int = 750
    eval_every: int = 250
    eval_images: int = 56
    eval_steps: int = 20
    guidance: float = 5.0
    max_minutes: float | None = None  # stop the UNet phase after this long (the VAE phase is separate)
    # Share of the UNet's training objects painted in several colours and captioned without a colour
    # word (never a subject's look): a model that never saw a multi-colour object cannot learn one
    # from a few photos, as a real base model has seen every kind of look before DreamBooth.
    multicolor_share: float = 0.0
    # Share of those multi-colour objects whose caption names them with a rare token before the
    # shape ("a photo of a large zwx heart ..."), one of RARE_TOKENS drawn afresh each time, as web
    # captions name individuals whose look they do not describe. Alone, not in the shipped model: a
    # name that says nothing the rest of the caption does not is a word the model learns to ignore,
    # and LoRA subject fidelity fell from 0.58-0.63 to 0.15 on a model continued this way
    # (BENCHMARKS.md). With ``individuals`` (below) each name means a look, and it rose to 0.90 (v4).
    named_share: float = 0.0
    # With individuals = N > 0 the named objects are N fixed individuals instead, each a made-up
    # name (several tokenizer pieces, never an identifier of RARE_TOKENS) with one shape and one
    # multi-colour look of its own (:data:`INDIVIDUALS`), as a web-scale model has seen named people
    # and things whose look their name means: "a photo of a large tanatu heart" always shows tanatu.
    # The shipped v4 (phases I and J): the model learns that a word before the shape can carry a look,
    # which is what DreamBooth asks of "sks" (BENCHMARKS.md, 2026-12-06 (evening)).
    individuals: int = 0
    decoder_steps: int = 0  # decoder-only refinement after the UNet phase (encoder frozen)
    # Share of the decoder refinement's objects painted in several colours (never a subject's look):
    # a decoder that saw one-colour objects only blurs a subject's colour regions into one.
    decoder_multicolor_share: float = 0.0
    # After the UNet phase, rescale the rows of tokens no caption uses ("sks", ...) to the caption
    # words' median norm (:func:`rare_rows_at_trained_norm`), as a web-scale text encoder has trained
    # every row. Not in the shipped model: the identifier's random direction then decides
    # how well a LoRA learns a subject (0.00-0.96 on one subject across three identifiers).
    rare_token_norm: bool = False
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None
    vae_from: str = ""  # a model folder (or its vae/ folder) whose trained VAE replaces phase 1
    init_from: str = ""  # a toy model folder to continue pretraining (implies its VAE)
    # "best": the folder holds the evaluation with the best joint fidelity; "last": the latest one
    # (for a phase of a curriculum, whose own scores are not the point).
    keep: str = "best"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Fidelity:
    """Prompt fidelity of a set of generated images: per attribute and all four together."""

    overall: float
    per_attribute: dict[str, float]
    n: int

    def format(self) -> str:
        parts = " ".join(f"{k}={v:.2f}" for k, v in self.per_attribute.items())
        return f"fidelity={self.overall:.3f} ({parts}, n={self.n})"


# --------------------------------------------------------------------------- data


def is_held_out(scene: Scene) -> bool:
    """Whether the scene uses one of the combinations pretraining never shows."""
    return (
        HELD_OUT_COLORS[scene.shape] == scene.color or HELD_OUT_BACKGROUNDS[scene.shape] == scene.background
    )


def training_scene(rng: random.Random) -> Scene:
    """A uniformly random scene outside the held-out combinations."""
    while True:
        scene = Scene(
            shape=rng.choice(SHAPES),
            color=rng.choice(COLORS),
            size=rng.choice(SIZES),
            position=rng.choice(POSITIONS),
            background=rng.choice(BACKGROUNDS),
        )
        if not is_held_out(scene):
            return scene


def held_out_scenes(n: int, seed: int = 1234) -> list[Scene]:
    """``n`` scenes, each with a held-out (shape, colour) or (shape, background) pair, alternating."""
    rng = random.Random(seed)
    scenes = []
    for i in range(n):
        shape = SHAPES[i % len(SHAPES)]
        if (i // len(SHAPES)) % 2 == 0:
            color = HELD_OUT_COLORS[shape]
            background = rng.choice(BACKGROUNDS)
        else:
            color = rng.choice(COLORS)
            background = HELD_OUT_BACKGROUNDS[shape]
        scenes.append(Scene(shape, color, rng.choice(SIZES), rng.choice(POSITIONS), background))
    return scenes


def partial_caption(scene: Scene, keep: Iterable[str], name: str = "") -> str:
    """The scene's caption with only the attributes in ``keep`` said (the shape is always said),
    and ``name`` (if any) right before the shape, where a DreamBooth prompt puts its identifier."""
    kept = set(keep)
    words = ["a photo of a"]
    if "size" in kept:
        words.append(scene.size)
    if "color" in kept and scene.color is not None:
        words.append(scene.color)
    if name:
        words.append(name)
    words.append(scene.shape)
    if "position" in kept:
        words.append(POSITION_PHRASES[scene.position])
    if "background" in kept:
        words.append(f"on a {BACKGROUND_PHRASES[scene.background]} background")
    return " ".join(words)


@dataclass(frozen=True)
class NamedScene(Scene):
    """A scene whose object is the individual ``name`` (:data:`INDIVIDUALS`), drawn in its own look."""

    name: str = ""


def _individuals() -> dict[str, tuple[str, int]]:
    """Made-up names -> (shape, paint seed): consonant-vowel words the captions never use."""
    rng = random.Random(2026)
    names: dict[str, tuple[str, int]] = {}
    while len(names) < 48:
        word = "".join(rng.choice("bdgkmnprtvz") + rng.choice("aeiou") for _ in range(rng.choice((2, 3))))
        if word not in names and word not in RARE_TOKENS:
            names[word] = (SHAPES[len(names) % len(SHAPES)], rng.randrange(1 << 30))
    return names


# Up to 48 individuals; ``PretrainSettings.individuals`` = N uses the first N.
INDIVIDUALS: dict[str, tuple[str, int]] = _individuals()


def individual_paint(name: str) -> Any:
    """The one look of individual ``name``: a multi-colour paint of its shape (never a subject's)."""
    shape, seed = INDIVIDUALS[name]
    return multicolor_paint(random.Random(seed), shape)[0]


def training_caption(scene: Scene, rng: random.Random, settings: PretrainSettings) -> str:
    """A caption for training: empty (classifier-free guidance), full, or with attributes left out."""
    if rng.random() < settings.caption_dropout:
        return ""
    if isinstance(scene, NamedScene):  # an individual is always named, its look never described
        keep = [a for a in ("size", "position", "background") if rng.random() >= settings.attribute_dropout]
        return partial_caption(scene, keep, scene.name)
    keep = [
        a for a in ("size", "color", "position", "background") if rng.random() >= settings.attribute_dropout
    ]
    if len(keep) == 4 and scene.color is not None:
        return caption(scene)
    # A multi-colour object (no colour) is never given a colour word; it may be given a name.
    name = ""
    if (
        scene.color is None
        and not settings.individuals
        and settings.named_share > 0
        and rng.random() < settings.named_share
    ):
        name = rng.choice(RARE_TOKENS)
    return partial_caption(scene, keep, name)


def tokenizer_corpus() -> list[str]:
    """Captions and words the tokenizer learns from: every vocabulary word and the rare tokens."""
    rng = random.Random(0)
    lines = [caption(training_scene(rng)) for _ in range(200)]
    lines += [" ".join(vocabulary())] * 5
    lines += [f"a photo of a {token} {shape}" for token in RARE_TOKENS for shape in SHAPES]
    return lines


def to_tensor(images: Sequence[Image.Image] | Sequence[np.ndarray]) -> torch.Tensor:
    """PIL images (or (H, W, 3) uint8 arrays) -> (N, 3, H, W) in [-1, 1]."""
    array = np.stack(
        [
            np.asarray(im.convert("RGB") if isinstance(im, Image.Image) else im, dtype=np.float32)
            for im in images
        ]
    )
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def to_images(batch: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> PIL images."""
    array = ((batch.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


def draw_batch(
    rng: random.Random,
    n: int,
    multicolor_share: float = 0.0,
    individuals: int = 0,
    named_share: float = 0.0,
) -> list[tuple[Scene, int]]:
    """``n`` training scenes and their render seeds, drawn in :func:`render_batch`'s order.

    A ``multicolor_share`` of the scenes lose their colour (``color=None``): :func:`render_training`
    paints those objects in several colours and :func:`training_caption` says no colour for them.
    With ``individuals`` > 0, a ``named_share`` of those become one of the first ``individuals``
    of :data:`INDIVIDUALS` (a :class:`NamedScene`: its shape, its look, its name in the caption).
    """
    scenes = [training_scene(rng) for _ in range(n)]
    if multicolor_share > 0:
        scenes = [
            dataclasses.replace(scene, color=None) if rng.random() < multicolor_share else scene
            for scene in scenes
        ]
    if individuals > 0:
        names = list(INDIVIDUALS)[:individuals]
        scenes = [
            _as_individual(scene, rng.choice(names))
            if scene.color is None and rng.random() < named_share
            else scene
            for scene in scenes
        ]
    return [(scene, rng.randrange(1 << 30)) for scene in scenes]


def _as_individual(scene: Scene, name: str) -> NamedScene:
    shape = INDIVIDUALS[name][0]
    return NamedScene(shape, None, scene.size, scene.position, scene.background, name=name)


def render_training(scene: Scene, seed: int) -> Image.Image:
    """A training render: the scene as drawn, or, for a scene without a colour, its shape painted
    in several colours (``subjects.multicolor_paint`` seeded by ``seed``; never a subject's look)."""
    if isinstance(scene, NamedScene):
        return render_pattern(scene, individual_paint(scene.name), RESOLUTION, seed=seed)
    if scene.color is None:
        paint, _ = multicolor_paint(random.Random(seed), scene.shape)
        return render_pattern(scene, paint, RESOLUTION, seed=seed)
    return render(scene, size=RESOLUTION, seed=seed)


def render_drawn(drawn: Sequence[tuple[Scene, int]]) -> list[np.ndarray]:
    """The renders of drawn (scene, seed) pairs as (H, W, 3) uint8 arrays (pure: any process)."""
    return [np.asarray(render_training(scene, seed)) for scene, seed in drawn]


def render_batch(
    rng: random.Random, n: int, multicolor_share: float = 0.0, individuals: int = 0, named_share: float = 0.0
) -> tuple[list[Scene], list[Image.Image]]:
    drawn = draw_batch(rng, n, multicolor_share, individuals, named_share)
    return [scene for scene, _ in drawn], [render_training(s, seed) for s, seed in drawn]


def render_batch_with_masks(
    rng: random.Random, n: int, multicolor_share: float = 0.0
) -> tuple[list[Image.Image], torch.Tensor]:
    """Fresh renders and, per image, the object's pixel coverage (N, 1, H, W) in 0..1.

    A ``multicolor_share`` of the objects is painted with ``subjects.multicolor_paint`` instead of
    the scene's one colour (the decoder's data; never a subject's look).
    """
    images, masks = [], []
    for _ in range(n):
        scene, seed = training_scene(rng), rng.randrange(1 << 30)
        if multicolor_share > 0 and rng.random() < multicolor_share:
            paint, _ = multicolor_paint(rng, scene.shape)
            images.append(render_pattern(scene, paint, RESOLUTION, seed=seed))
        else:
            images.append(render(scene, size=RESOLUTION, seed=seed))
        masks.append(coverage(scene.shape, placement(scene, seed), RESOLUTION))
    return images, torch.from_numpy(np.stack(masks)).float()[:, None]


# --------------------------------------------------------------------------- metrics


def prompt_fidelity(images: Sequence[Image.Image], scenes: Sequence[Scene]) -> Fidelity:
    """Share of images whose shape, colour, position and background all agree with their scene."""
    if len(images) != len(scenes) or not images:
        raise ValueError("prompt_fidelity needs as many scenes as images, at least one")
    hits = {a: 0 for a in ATTRIBUTES}
    joint = 0
    for image, scene in zip(images, scenes, strict=True):
        agrees = measure(image).agrees(scene)
        for a in ATTRIBUTES:
            hits[a] += bool(agrees.get(a, True))
        joint += all(agrees.get(a, True) for a in ATTRIBUTES)
    n = len(images)
    return Fidelity(joint / n, {a: hits[a] / n for a in ATTRIBUTES}, n)


def generate(
    pipe: Any,
    prompts: Sequence[str],
    *,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 5.0,
    batch_size: int = 32,
    resolution: int = RESOLUTION,
) -> list[Image.Image]:
    """Images for ``prompts``, image i seeded by ``seed + i`` whatever the batching."""
    out: list[Image.Image] = []
    device = pipe.unet.device
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        generators = [torch.Generator(device).manual_seed(seed + start + i) for i in range(len(chunk))]
        result = pipe(
            chunk,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=resolution,
            width=resolution,
            generator=generators,
        )
        out.extend(result.images)
    return out


def evaluate_pipeline(
    pipe: Any, n: int = 56, *, steps: int = 20, guidance: float = 5.0, seed: int = 0
) -> Fidelity:
    """Prompt fidelity of ``pipe`` on ``n`` held-out captions."""
    scenes = held_out_scenes(n)
    images = generate(pipe, [caption(s) for s in scenes], seed=seed, steps=steps, guidance=guidance)
    return prompt_fidelity(images, scenes)


# --------------------------------------------------------------------------- model


SCHEDULES = ("sd", "zero-snr")


def noise_schedule(kind: str = "sd") -> dict[str, Any]:
    """The training noise schedule: Stable Diffusion's, or the same rescaled to zero terminal SNR.

    SD's last timestep keeps sqrt(alpha_bar) = 0.068 of the signal, and at 24x24 latents that is
    enough to read the layout: a linear probe finds the object's position in 6x6-pooled x_t at
    t=951 (where 20 leading DDIM steps start) 21% of the time (chance 11%), the background from
    the channel means and stds 38% (chance 10%; bench/schedule_leak.py). A model trained so takes position and background
    from the noise rather than the caption, and sampling starts from pure noise, where they are
    random: v1's position fidelity is chance. Zero terminal SNR leaves nothing to read at the last
    step, which needs the v target (epsilon is undefined there) and trailing spacing (sampling
    starts at t=999).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule {kind!r}: choose one of {', '.join(SCHEDULES)}")
    schedule: dict[str, Any] = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "steps_offset": 1,
    }
    if kind == "zero-snr":
        schedule.update(
            rescale_betas_zero_snr=True,
            prediction_type="v_prediction",
            timestep_spacing="trailing",  # (steps_offset does not apply to trailing spacing)
        )
    return schedule


def sampling_scheduler(kind: str = "sd") -> Any:
    """The DDIM scheduler a toy model folder ships with."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**noise_schedule(kind), clip_sample=False, set_alpha_to_one=False)


def build_components(settings: PretrainSettings, tokenizer_dir: Path) -> dict[str, Any]:
    """Freshly initialised components of the toy SD-1 pipeline."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from boothkit.tiny import train_tokenizer

    train_tokenizer(tokenizer_dir, tokenizer_corpus(), vocab_size=600)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=MAX_TOKENS)
    hidden = settings.text_width
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=MAX_TOKENS,
            projection_dim=hidden,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_act="quick_gelu",
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=RESOLUTION,
    )
    w, levels = settings.width, settings.levels
    if levels not in (3, 4):
        raise ValueError(f"levels {levels}: the toy UNet has 3 or 4 resolution levels")
    # Cross-attention is where a caption's words reach the pixels, and a word like "top left" can
    # only land somewhere if the features know where they are. A convolution learns that only
    # from its zero padding; at 3x3 latent pixels (the fourth level) each pixel is one cell of the
    # captions' 3x3 position grid and its padding pattern (corner, edge, centre) is unique to it.
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=tuple(w * (i + 1) for i in range(levels)),
        **unet_layout(levels, settings.fine_attention),
        norm_num_groups=16,
        cross_attention_dim=hidden,
        attention_head_dim=4,  # diffusers reads this as the number of heads
        # Cross-attention reaches a pixel only through a product of its query and a word's key, which
        # a small model learns slowly (v1 never followed position words in 7000 steps). The pooled
        # caption added to the time embedding is a per-channel bias in every ResNet block: a direct
        # path for global attributes, and, through the next convolution's zero padding, a linear
        # one from words to places (a constant map convolved at 3x3 differs in all nine cells).
        # diffusers computes it from encoder_hidden_states itself, so every SD pipeline runs as is.
        addition_embed_type="text" if settings.pooled_text else None,
        addition_embed_type_num_heads=4,
    )
    scheduler = sampling_scheduler(settings.schedule)
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "unet": unet,
        "scheduler": scheduler,
    }


def unet_layout(levels: int, fine_attention: bool) -> dict[str, Any]:
    """The UNet's block types: cross-attention at every level but the first, or, with
    ``fine_attention``, at the first too, where it attends to the caption only (both attention
    layers): self-attention over 24 x 24 pixels tripled a CPU training step, and what the level
    lacks is the caption (576 x 32 scores, not 576 x 576)."""
    first_down, last_up = (
        ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D") if fine_attention else ("DownBlock2D", "UpBlock2D")
    )
    return {
        "down_block_types": (first_down, *("CrossAttnDownBlock2D",) * (levels - 1)),
        "up_block_types": (*("CrossAttnUpBlock2D",) * (levels - 1), last_up),
        "only_cross_attention": (True, *(False,) * (levels - 1)) if fine_attention else False,
    }


def with_fine_attention(unet: Any) -> Any:
    """``unet`` with caption attention added at its first level, computing exactly what it did.

    Every other weight is copied; each new transformer block's output projection starts at zero,
    so the block adds nothing to its residual until training moves it. A UNet that has it already
    is returned as is.
    """
    from diffusers import UNet2DConditionModel

    layout = unet_layout(len(unet.config.block_out_channels), fine_attention=True)
    if tuple(unet.config.down_block_types) == layout["down_block_types"]:
        return unet
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    grown: Any = UNet2DConditionModel(**{**config, **layout})
    missing, unexpected = grown.load_state_dict(unet.state_dict(), strict=False)
    if unexpected or any(".attentions." not in k for k in missing):
        raise ValueError(f"cannot add fine attention: unexpected {unexpected}, missing {missing}")
    for block in (grown.down_blocks[0], grown.up_blocks[-1]):
        for attention in block.attentions:
            torch.nn.init.zeros_(attention.proj_out.weight)
            torch.nn.init.zeros_(attention.proj_out.bias)
    return grown.to(dtype=next(unet.parameters()).dtype)


def assemble(components: dict[str, Any]) -> Any:
    from diffusers import StableDiffusionPipeline

    pipe: Any = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_model(components: dict[str, Any], output: Path, meta: dict[str, Any]) -> None:
    """Write the pipeline folder with fp16 weights, atomically, keeping the log written so far."""
    import shutil

    from boothkit.io import atomic_write_dir

    half = {
        k: (copy.deepcopy(v).to("cpu", torch.float16) if isinstance(v, torch.nn.Module) else v)
        for k, v in components.items()
    }
    log = output / "pretrain_log.txt"

    def write(tmp: Path) -> None:
        assemble(half).save_pretrained(tmp, safe_serialization=True)
        (tmp / "boothkit_toyworld.json").write_text(json.dumps(meta, indent=2) + "\n")
        if log.exists():
            shutil.copy2(log, tmp / "pretrain_log.txt")

    atomic_write_dir(output, write)


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- training


def _train_vae(vae: Any, settings: PretrainSettings, rng: random.Random, log: Callable[[str], None]) -> None:
    device = settings.device
    vae.to(device).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr, weight_decay=0.0)
    started = time.time()
    for step in range(1, settings.vae_steps + 1):
        _, images = render_batch(rng, settings.vae_batch_size)
        x = to_tensor(images).to(device)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        kl = posterior.kl().mean() / x[0].numel()
        # L1 keeps small objects' edges sharper than MSE alone; the KL term only keeps latents tame.
        loss = mse + 0.5 * torch.nn.functional.l1_loss(recon, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == settings.vae_steps:
            log(
                f"vae step {step}/{settings.vae_steps} mse={mse.item():.4f} kl={kl.item():.3f} [{time.time() - started:.0f} s]"
            )
    vae.eval().requires_grad_(False)


@torch.no_grad()
def _vae_check(vae: Any, device: str, n: int = 64) -> tuple[float, float]:
    """Oracle fidelity of VAE reconstructions of fresh renders, and the latents' std."""
    rng = random.Random(999)
    scenes, images = render_batch(rng, n)
    x = to_tensor(images).to(device)
    latents = vae.encode(x).latent_dist.mean
    recon = to_images(vae.decode(latents).sample)
    return prompt_fidelity(recon, scenes).overall, float(latents.std())


def object_weights(masks: torch.Tensor, object_weight: float) -> torch.Tensor:
    """Per-pixel loss weights: 1 on background, 1 + ``object_weight`` on and one pixel around the object."""
    grown = torch.nn.functional.max_pool2d(masks, kernel_size=3, stride=1, padding=1)
    return 1.0 + object_weight * grown


def weighted_reconstruction_loss(recon: torch.Tensor, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted MSE + 0.5 weighted L1, normalised by the weights' sum (pure)."""
    err = recon - x
    per_pixel = (err**2 + 0.5 * err.abs()).mean(dim=1, keepdim=True)
    return (weights * per_pixel).sum() / weights.sum()


def refine_decoder(
    vae: Any,
    steps: int,
    *,
    lr: float = 5e-4,
    batch_size: int = 32,
    object_weight: float = 10.0,
    multicolor_share: float = 0.0,
    device: str = "cpu",
    seed: int = 1,
    log: Callable[[str], None] = print,
    every: int = 100,
    save: Callable[[Any], None] | None = None,
) -> float:
    """Train only the decoder on sampled latents of fresh renders; returns reconstruction fidelity.

    The encoder (the latent space the UNet learned) is frozen, so this can run after, or beside,
    UNet training and the refined decoder can replace the old one in a finished model. Objects
    cover a few percent of the pixels and are what blur first (a blurred star reads as a circle),
    so their pixels weigh ``1 + object_weight`` in the loss. A ``multicolor_share`` of the objects
    is painted in several colours (``render_batch_with_masks``), so the decoder learns to keep a
    subject's colour regions apart. ``save`` is called with the VAE after
    every evaluation that is the best so far.
    """
    rng = random.Random(seed)
    noise = torch.Generator(device).manual_seed(seed)
    vae.to(device)
    vae.requires_grad_(False)
    trainable = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    started = time.time()
    best, _ = _vae_check(vae.eval(), device)
    log(f"decoder step 0/{steps}: reconstruction fidelity {best:.3f}")
    for step in range(1, steps + 1):
        images, masks = render_batch_with_masks(rng, batch_size, multicolor_share)
        x = to_tensor(images).to(device)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(generator=noise)
        recon = vae.decode(z).sample
        loss = weighted_reconstruction_loss(recon, x, object_weights(masks.to(device), object_weight))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            fidelity, _ = _vae_check(vae, device)
            log(
                f"decoder step {step}/{steps}: loss={loss.item():.4f} reconstruction fidelity {fidelity:.3f} [{time.time() - started:.0f} s]"
            )
            if fidelity >= best:
                best = fidelity
                if save is not None:
                    save(vae)
    vae.requires_grad_(False)
    return best


def stamped_logger(path: Path, log: Callable[[str], None]) -> Callable[[str], None]:
    """A log function that time-stamps each line, passes it on to ``log`` and appends it to ``path``."""

    def say(line: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {line}"
        log(stamped)
        with path.open("a") as f:
            f.write(stamped + "\n")

    return say


def refine_model_decoder(
    folder: str | Path, steps: int, *, log: Callable[[str], None] = print, **kw: Any
) -> float:
    """Refine the decoder of a toy model folder in place; the log goes to its pretrain_log.txt too."""

    model = Path(folder)
    say = stamped_logger(model / "pretrain_log.txt", log)

    vae = load_vae(model)
    say(f"refine decoder of {model}: {steps} steps {json.dumps(kw)}")
    best = refine_decoder(vae, steps, log=say, save=lambda v: replace_decoder(model, v), **kw)
    meta_path = model / "boothkit_toyworld.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        meta["vae_reconstruction_fidelity"] = best
        meta["decoder_refinement_steps"] = meta.get("decoder_refinement_steps", 0) + steps
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    say(f"decoder refined: best reconstruction fidelity {best:.3f}")
    return best


def replace_decoder(folder: Path, vae: Any) -> None:
    """Write ``vae`` (fp16) over the model folder's VAE, atomically; its encoder must be the folder's own."""
    from boothkit.io import atomic_write_dir

    half = copy.deepcopy(vae).to("cpu", torch.float16)
    atomic_write_dir(Path(folder) / "vae", lambda tmp: half.save_pretrained(tmp, safe_serialization=True))


def caption_token_ids(tokenizer: Any) -> set[int]:
    """Ids of every token a training caption can hold: the world's words and the start and end markers."""
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    for word in vocabulary():
        ids.update(tokenizer(word, add_special_tokens=False).input_ids)
    return ids


def rare_rows_at_trained_norm(weight: torch.Tensor, used: Iterable[int]) -> torch.Tensor:
    """The embedding ``weight`` with every row not in ``used`` rescaled to the used rows' median norm.

    Directions are kept and the used rows are returned unchanged, so no caption's encoding moves.
    Pretraining only ever updates the rows its captions use; the others stay at their initial scale
    (norm ~0.12 against ~1.0 on the toy model), so a prompt's "sks" is a near-blank. In a real CLIP
    every row is trained. Measured on the bench, not adopted (BENCHMARKS.md, 2026-12-05).
    """
    index = torch.tensor(sorted(set(used)), dtype=torch.long)
    norms = weight.norm(dim=1)
    target = norms[index].median()
    rare = torch.ones(weight.shape[0], dtype=torch.bool)
    rare[index] = False
    rare &= norms > 0  # a zero row has no direction to keep
    out = weight.clone()
    out[rare] = weight[rare] * (target / norms[rare])[:, None]
    return out


def calibrate_model_tokens(folder: str | Path, *, log: Callable[[str], None] = print) -> int:
    """Apply :func:`rare_rows_at_trained_norm` to a toy model folder's text encoder in place.

    The folder's ``pretrain_log.txt`` and ``boothkit_toyworld.json`` record it; running it again
    changes nothing. Returns the number of rows rescaled.
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    from boothkit.io import atomic_write_dir

    model = Path(folder)
    say = stamped_logger(model / "pretrain_log.txt", log)
    tokenizer = CLIPTokenizer.from_pretrained(str(model / "tokenizer"))
    text_encoder: Any = CLIPTextModel.from_pretrained(str(model / "text_encoder"), torch_dtype=torch.float32)
    embedding = text_encoder.get_input_embeddings()
    used = caption_token_ids(tokenizer)
    before = embedding.weight.detach().norm(dim=1)
    with torch.no_grad():
        embedding.weight.copy_(rare_rows_at_trained_norm(embedding.weight, used))
    after = embedding.weight.detach().norm(dim=1)
    rare = sorted(set(range(len(after))) - used)
    target = float(after[sorted(used)].median())
    text_encoder.to(torch.float16)
    atomic_write_dir(
        model / "text_encoder", lambda tmp: text_encoder.save_pretrained(tmp, safe_serialization=True)
    )
    meta_path = model / "boothkit_toyworld.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        meta["rare_token_rows"] = {"rows": len(rare), "norm": round(target, 4)}
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    say(
        f"rare token rows: {len(rare)} rows no caption uses, norms {float(before[rare].min()):.3f}-"
        f"{float(before[rare].max()):.3f} -> {target:.3f} (the caption words' median); caption rows unchanged"
    )
    return len(rare)


def load_components(folder: str | Path) -> dict[str, Any]:
    """The trainable components of a toy model folder, in float32, to continue pretraining."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    root = Path(folder)
    return {
        "tokenizer": CLIPTokenizer.from_pretrained(str(root / "tokenizer")),
        "text_encoder": CLIPTextModel.from_pretrained(str(root / "text_encoder"), torch_dtype=torch.float32),
        "vae": load_vae(root),
        "unet": UNet2DConditionModel.from_pretrained(str(root / "unet"), torch_dtype=torch.float32),
        "scheduler": DDIMScheduler.from_pretrained(str(root / "scheduler")),
    }


def load_vae(path: str | Path) -> Any:
    """The AutoencoderKL of a toy model folder, or of a vae/ folder, in float32."""
    from diffusers import AutoencoderKL

    folder = Path(path)
    if (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    return AutoencoderKL.from_pretrained(str(folder), torch_dtype=torch.float32)


def pool_workers(asked: int | None, cores: int | None = None) -> int:
    """Render processes for the pool: as asked, else all cores but the encoder's, none on two cores
    or fewer (on the 2-core VM one render process beside the encoder was slower: BENCHMARKS.md)."""
    if asked is not None:
        return max(0, asked)
    n = cores if cores is not None else (os.cpu_count() or 1)
    return n - 1 if n > 2 else 0


@dataclass(frozen=True)
class LatentPool:
    """Encoded renders: scene i's posterior is N(mean[i], std[i]^2), unscaled."""

    scenes: list[Scene]
    mean: torch.Tensor  # (N, 4, h, w)
    std: torch.Tensor  # (N, 4, h, w)

    def sample(self, rng: random.Random, n: int, scaling: float) -> tuple[list[Scene], torch.Tensor]:
        """``n`` scenes drawn with replacement and a fresh latent sample of each, scaled."""
        picks = [rng.randrange(len(self.scenes)) for _ in range(n)]
        mean, std = self.mean[picks], self.std[picks]
        return [self.scenes[i] for i in picks], (mean + std * torch.randn_like(mean)) * scaling


@torch.no_grad()
def fresh_latents(
    vae: Any,
    rng: random.Random,
    n: int,
    scaling: float,
    device: str,
    multicolor_share: float = 0.0,
    individuals: int = 0,
    named_share: float = 0.0,
) -> tuple[list[Scene], torch.Tensor]:
    """``n`` new renders and a latent sample of each, scaled: the data without a pool."""
    scenes, images = render_batch(rng, n, multicolor_share, individuals, named_share)
    return scenes, vae.encode(to_tensor(images).to(device)).latent_dist.sample() * scaling


def loss_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma weights for the epsilon or v target.

    In x0 terms min-SNR weighs a timestep min(snr, gamma); for v it is floored at one,
    min(snr + 1, gamma), so that the high-noise steps, where the layout is decided, keep their
    weight and the zero-SNR step is not dropped (boothkit.losses.min_snr_weights gives it 0).
    """
    if prediction_type == "v_prediction":
        return torch.clamp(snr + 1.0, max=gamma) / (snr + 1.0)
    return min_snr_weights(snr, gamma, prediction_type)


def draw_timesteps(
    n: int, num_train_timesteps: int, high_noise_share: float, device: Any, high_noise_from: int = 750
) -> torch.Tensor:
    """Uniform timesteps, except that about ``high_noise_share`` of them come from [high_noise_from, T)."""
    t = torch.randint(0, num_train_timesteps, (n,), device=device)
    if high_noise_share > 0:
        late = torch.randint(high_noise_from, num_train_timesteps, (n,), device=device)
        t = torch.where(torch.rand(n, device=device) < high_noise_share, late, t)
    return t


def diffusion_loss(
    unet: Any,
    text_encoder: Any,
    input_ids: torch.Tensor,
    latents: torch.Tensor,
    noise_sched: Any,
    snr_gamma: float,
    high_noise_share: float = 0.0,
    high_noise_from: int = 750,
) -> torch.Tensor:
    """The min-SNR-weighted loss (epsilon or v target) of one batch at drawn timesteps."""
    device = latents.device
    noise = torch.randn_like(latents)
    n_train = noise_sched.config.num_train_timesteps
    t = draw_timesteps(latents.shape[0], n_train, high_noise_share, device, high_noise_from)
    noisy = noise_sched.add_noise(latents, noise, t)
    hidden = text_encoder(input_ids.to(device))[0]
    pred = unet(noisy, t, hidden).sample
    target = training_target(noise_sched, latents, noise, t)
    weight = loss_weights(
        compute_snr(noise_sched.alphas_cumprod, t), snr_gamma, noise_sched.config.prediction_type
    )
    return (weight * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()


def caption_ids(tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """Token ids (N, MAX_TOKENS), padded as the pipeline pads prompts."""
    return tokenizer(
        list(texts), padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids


@torch.no_grad()
def encode_pool(
    vae: Any,
    n: int,
    rng: random.Random,
    device: str,
    *,
    batch_size: int = 64,
    workers: int = 0,
    multicolor_share: float = 0.0,
    individuals: int = 0,
    named_share: float = 0.0,
) -> LatentPool:
    """``n`` fresh training renders encoded once: their scenes and the posteriors' means and stds.

    The VAE is frozen while the UNet trains, so a render's posterior never changes; sampling
    ``mean + std * noise`` from a pool is the same data as encoding afresh, without the renderer
    and the encoder running every step (a third of a CPU step at the toy model's size, and what
    would starve a GPU). Scenes and seeds are drawn here, so ``workers`` processes rendering the
    batches while this one encodes give the same pool as rendering here (``workers=0``).
    """
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    batches = [
        draw_batch(rng, min(batch_size, n - start), multicolor_share, individuals, named_share)
        for start in range(0, n, batch_size)
    ]
    scenes: list[Scene] = []
    means, stds = [], []

    def encode(drawn: list[tuple[Scene, int]], arrays: list[np.ndarray]) -> None:
        dist = vae.encode(to_tensor(arrays).to(device)).latent_dist
        scenes.extend(scene for scene, _ in drawn)
        means.append(dist.mean)
        stds.append(dist.std)

    if workers > 0:
        # spawn: the workers import numpy and Pillow only, never a forked copy of torch's threads
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for drawn, arrays in zip(batches, pool.map(render_drawn, batches), strict=True):
                encode(drawn, arrays)
    else:
        for drawn in batches:
            encode(drawn, render_drawn(drawn))
    return LatentPool(scenes, torch.cat(means), torch.cat(stds))


def check_share(flag: str, value: float) -> None:
    """Refuse a share (``flag``'s value) outside 0..1."""
    from boothkit.errors import BoothkitError

    if not 0.0 <= value <= 1.0:
        raise BoothkitError(f"{flag} {value}: a share between 0 and 1")


def check_sources(settings: PretrainSettings) -> None:
    """Refuse --vae-from / --init-from folders that hold no toy model, and timestep settings out of
    range, before anything is written."""
    from boothkit.errors import BoothkitError

    for name in ("high_noise_share", "multicolor_share", "named_share", "decoder_multicolor_share"):
        check_share(f"--{name.replace('_', '-')}", getattr(settings, name))
    if not 0 <= settings.individuals <= len(INDIVIDUALS):
        raise BoothkitError(f"--individuals {settings.individuals}: a count from 0 to {len(INDIVIDUALS)}")
    if settings.individuals and not (settings.named_share and settings.multicolor_share):
        raise BoothkitError(
            f"--individuals {settings.individuals} draws nothing without --multicolor-share and --named-share",
            hint="the individuals are that share of the multi-colour objects, e.g. --multicolor-share 0.4 --named-share 0.6",
        )
    if not 0 <= settings.high_noise_from <= 999:
        raise BoothkitError(f"--high-noise-from {settings.high_noise_from}: a timestep from 0 to 999")
    positive = (
        *("steps", "batch_size", "vae_batch_size", "lr", "vae_lr", "width", "text_width"),
        *("eval_every", "eval_images", "eval_steps"),
    )
    for name in positive:
        if getattr(settings, name) <= 0:
            raise BoothkitError(f"--{name.replace('_', '-')} must be positive, got {getattr(settings, name)}")
    for name in ("vae_steps", "decoder_steps", "pool"):
        if getattr(settings, name) < 0:
            raise BoothkitError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(settings, name)}")
    if settings.max_minutes is not None and settings.max_minutes <= 0:
        raise BoothkitError(f"--max-minutes must be positive, got {settings.max_minutes}")

    hint = "pass a model folder written by boothkit toyworld pretrain (e.g. src/boothkit/toyworld/model)"
    if settings.vae_from:
        folder = Path(settings.vae_from)
        if not ((folder / "config.json").is_file() or (folder / "vae" / "config.json").is_file()):
            raise BoothkitError(f"--vae-from {folder}: no VAE here (no config.json or vae/)", hint=hint)
    if settings.init_from:
        folder = Path(settings.init_from)
        missing = [p for p in ("tokenizer", "text_encoder", "vae", "unet") if not (folder / p).is_dir()]
        if missing:
            raise BoothkitError(f"--init-from {folder}: no {', '.join(missing)} folder here", hint=hint)


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)


def pretrain(
    output: str | Path,
    settings: PretrainSettings | None = None,
    *,
    log: Callable[[str], None] = print,
) -> Path:
    """Pretrain the toy base model into ``output`` (a StableDiffusionPipeline folder); returns it."""
    import tempfile

    from diffusers import DDPMScheduler

    s = settings or PretrainSettings()
    check_sources(s)
    out = require_empty_folder(
        output,
        "--output",
        hint="pretraining writes a new model folder (--init-from continues an existing one)",
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "pretrain_log.txt").write_text("")
    say = stamped_logger(out / "pretrain_log.txt", log)

    if s.threads:
        torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    rng = random.Random(s.seed)
    say(f"settings {json.dumps(asdict(s))}")
    say(f"held out (shape, colour): {HELD_OUT_COLORS}")
    say(f"held out (shape, background): {HELD_OUT_BACKGROUNDS}")
    started = time.time()
    if s.init_from:
        components = load_components(s.init_from)
        s.vae_from = s.vae_from or s.init_from
        say(f"continuing from {s.init_from} (its tokenizer, text encoder and UNet; a fresh optimizer)")
        wanted = sampling_scheduler(s.schedule)
        if components["scheduler"].config.prediction_type != wanted.config.prediction_type:
            say(f"switching to the {s.schedule} schedule and its target")
        components["scheduler"] = wanted
        if s.fine_attention:
            components["unet"] = with_fine_attention(components["unet"])
            say("cross-attention added at the first level (identity at the start)")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            components = build_components(s, Path(tmp) / "tokenizer")
    tokenizer, text_encoder, vae, unet = (components[k] for k in ("tokenizer", "text_encoder", "vae", "unet"))
    for name in ("text_encoder", "vae", "unet"):
        n_params = sum(p.numel() for p in components[name].parameters())
        say(f"{name}: {n_params / 1e6:.2f} M parameters")

    # Phase 1: the autoencoder (or one trained before, with its scaling factor).
    if s.vae_from:
        vae = load_vae(s.vae_from).to(s.device).eval().requires_grad_(False)
        components["vae"] = vae
        vae_fid, _ = _vae_check(vae, s.device)
        scaling = float(vae.config.scaling_factor)
        say(f"vae loaded from {s.vae_from}: reconstruction fidelity {vae_fid:.3f}, scaling {scaling:.4f}")
    else:
        _train_vae(vae, s, rng, say)
        vae_fid, latent_std = _vae_check(vae, s.device)
        scaling = 1.0 / max(latent_std, 1e-3)
        vae.register_to_config(scaling_factor=scaling)
        say(
            f"vae done: reconstruction fidelity {vae_fid:.3f}, latent std {latent_std:.3f} -> scaling {scaling:.4f} [{time.time() - started:.0f} s]"
        )

    # Phase 2: UNet + text encoder.
    device = s.device
    unet.to(device).train()
    text_encoder.to(device).train()
    ema_unet = copy.deepcopy(unet).eval().requires_grad_(False)
    ema_text = copy.deepcopy(text_encoder).eval().requires_grad_(False)
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=1e-2)
    noise_sched: Any = DDPMScheduler(**noise_schedule(s.schedule))
    warmup = min(100, s.steps // 10 + 1)
    pool: LatentPool | None = None
    if s.pool > 0:
        pool_start = time.time()
        pool = encode_pool(
            vae,
            s.pool,
            rng,
            device,
            workers=pool_workers(s.workers),
            multicolor_share=s.multicolor_share,
            individuals=s.individuals,
            named_share=s.named_share,
        )
        say(f"pool: {s.pool} renders encoded [{time.time() - pool_start:.0f} s]")
    phase_start = time.time()
    best = -1.0
    best_step = 0
    losses: list[float] = []
    step = 0
    for step in range(1, s.steps + 1):
        for group in opt.param_groups:
            group["lr"] = s.lr * min(1.0, step / warmup)
        if pool is not None:
            scenes, latents = pool.sample(rng, s.batch_size, scaling)
        else:
            scenes, latents = fresh_latents(
                vae, rng, s.batch_size, scaling, device, s.multicolor_share, s.individuals, s.named_share
            )
        ids = caption_ids(tokenizer, [training_caption(sc, rng, s) for sc in scenes])
        loss = diffusion_loss(
            unet, text_encoder, ids, latents, noise_sched, s.snr_gamma, s.high_noise_share, s.high_noise_from
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(s.ema_decay, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_text, text_encoder, decay)
        losses.append(loss.item())
        elapsed = time.time() - phase_start
        out_of_time = s.max_minutes is not None and elapsed > 60 * s.max_minutes
        if step % 50 == 0:
            say(f"step {step}/{s.steps} loss={np.mean(losses[-50:]):.4f} [{elapsed:.0f} s]")
        if step % s.eval_every == 0 or step == s.steps or out_of_time:
            comps = {**components, "unet": ema_unet, "text_encoder": ema_text}
            fid = evaluate_pipeline(assemble(comps), s.eval_images, steps=s.eval_steps, guidance=s.guidance)
            say(f"eval step {step}: held-out {fid.format()} [{time.time() - phase_start:.0f} s]")
            if fid.overall >= best or s.keep == "last":
                best, best_step = fid.overall, step
                meta = {
                    "step": step,
                    "held_out_fidelity": fid.overall,
                    "per_attribute": fid.per_attribute,
                    "eval_images": fid.n,
                    "eval_steps": s.eval_steps,
                    "guidance": s.guidance,
                    "vae_reconstruction_fidelity": vae_fid,
                    "held_out_colors": HELD_OUT_COLORS,
                    "held_out_backgrounds": HELD_OUT_BACKGROUNDS,
                    "settings": asdict(s),
                }
                save_model(comps, out, meta)
                say(f"saved step {step} to {out} ({folder_size(out) / 1e6:.1f} MB)")
        if out_of_time:
            say(f"time limit of {s.max_minutes} min reached at step {step}")
            break
    if s.decoder_steps > 0:
        # The same as `boothkit toyworld refine-decoder --model OUT` afterwards (or beside phase 2):
        # the encoder is frozen from here on, so the UNet's latent space does not move.
        refine_model_decoder(out, s.decoder_steps, multicolor_share=s.decoder_multicolor_share, log=log)
    if s.rare_token_norm:  # the same as `boothkit toyworld calibrate-tokens --model OUT` afterwards
        calibrate_model_tokens(out, log=log)
    say(
        f"done: kept step {best_step} ({s.keep}), held-out fidelity {best:.3f}; total {(time.time() - started) / 60:.1f} min"
    )
    return out


def settings_from_args(args: Any) -> PretrainSettings:
    """PretrainSettings from an argparse namespace (the CLI's flags have the fields' names)."""
    s = PretrainSettings()
    for name in asdict(s):
        value = getattr(args, name, None)
        if value is not None:
            setattr(s, name, value)
    return s


def shipped_model_dir() -> Path:
    """The model folder that ships with boothkit."""
    return Path(__file__).resolve().parent / "model"


# --------------------------------------------------------------------------- curriculum

# The v2 model in one command: v1's recipe, then the zero-SNR phases that taught it position
# words (BENCHMARKS.md, "the noise schedule"). Each phase continues the previous one's folder with a
# fresh optimizer; its fields replace the command line's. The minute limits are the CPU runs'; a GPU
# reaches the step counts first.
CURRICULA: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    "v2": (
        ("v1", {"steps": 12000, "max_minutes": 80.0, "eval_every": 500, "decoder_steps": 1400}),
        ("A", {"schedule": "zero-snr", "pool": 16000, "steps": 1000, "eval_every": 500}),
        (
            "C",
            {
                "schedule": "zero-snr",
                "high_noise_share": 1.0,
                "high_noise_from": 999,
                "pool": 2000,
                "steps": 1000,
                "eval_every": 1000,
                "keep": "last",
                "ema_decay": 0.0,
            },
        ),
        (
            "D",
            {
                "schedule": "zero-snr",
                "high_noise_share": 0.5,
                "high_noise_from": 999,
                "pool": 4000,
                "steps": 4000,
                "max_minutes": 25.0,
                "eval_every": 250,
            },
        ),
        (
            "E",
            {
                "schedule": "zero-snr",
                "high_noise_share": 0.25,
                "high_noise_from": 999,
                "pool": 16000,
                "seed": 1,
                "steps": 4000,
                "max_minutes": 20.0,
                "eval_every": 250,
            },
        ),
        (
            "F",
            {
                "schedule": "zero-snr",
                "high_noise_share": 0.25,
                "high_noise_from": 999,
                "pool": 16000,
                "seed": 2,
                "lr": 5e-4,
                "steps": 4000,
                "max_minutes": 15.0,
                "eval_every": 250,
            },
        ),
    ),
}

# The shipped model (v3): v2, its decoder refined with multi-colour objects after F, then phase G with
# a quarter of the UNet's objects multi-coloured (captioned without a colour word).
CURRICULA["v3"] = (
    *CURRICULA["v2"][:-1],
    ("F", {**CURRICULA["v2"][-1][1], "decoder_steps": 1200, "decoder_multicolor_share": 0.5}),
    (
        "G",
        {
            "schedule": "zero-snr",
            "high_noise_share": 0.25,
            "high_noise_from": 999,
            "pool": 16000,
            "seed": 3,
            "lr": 5e-4,
            "steps": 4000,
            "max_minutes": 20.0,
            "eval_every": 250,
            "multicolor_share": 0.25,
        },
    ),
)
# v4, the shipped model: v3, then phases I and J, whose multi-colour objects include 24 named
# individuals, a look per name (BENCHMARKS.md, 2026-12-06 (evening)).
_INDIVIDUALS_PHASE: dict[str, Any] = {
    "schedule": "zero-snr",
    "high_noise_share": 0.25,
    "high_noise_from": 999,
    "pool": 16000,
    "seed": 5,
    "lr": 5e-4,
    "steps": 6000,
    "max_minutes": 30.0,
    "eval_every": 500,
    "multicolor_share": 0.4,
    "named_share": 0.6,
    "individuals": 24,
    "keep": "last",
}
CURRICULA["v4"] = (
    *CURRICULA["v3"],
    ("I", _INDIVIDUALS_PHASE),
    ("J", {**_INDIVIDUALS_PHASE, "seed": 6}),
)


def pretrain_curriculum(
    output: str | Path,
    phases: Sequence[tuple[str, dict[str, Any]]],
    settings: PretrainSettings | None = None,
    *,
    log: Callable[[str], None] = print,
) -> Path:
    """Run ``phases`` in sequence, each continuing the previous one's folder, into ``output``.

    ``settings`` holds what every phase shares (device, threads, batch size, ...); a phase's fields
    replace it. With ``settings.init_from`` set, the first phase continues from that folder, else it
    starts from scratch. The phases are written under ``.OUTPUT.phases/`` beside ``output``; the
    last one becomes ``output`` with every phase's log in its ``pretrain_log.txt``, and the phase
    folders are removed.
    """
    import shutil

    from boothkit.errors import BoothkitError

    base = settings or PretrainSettings()
    out = require_empty_folder(output, "--output", hint="a curriculum writes a new model folder")
    known = {f.name for f in dataclasses.fields(PretrainSettings)}
    for name, fields in phases:
        if set(fields) - known:
            raise BoothkitError(f"curriculum phase {name!r}: unknown settings {sorted(set(fields) - known)}")
    work = out.parent / f".{out.name}.phases"
    work.mkdir(parents=True, exist_ok=True)
    previous = base.init_from
    logs: list[str] = []
    for i, (name, fields) in enumerate(phases):
        # After the first phase the VAE comes with the previous folder (--vae-from would replace it).
        vae_from = base.vae_from if i == 0 else ""
        phase = dataclasses.replace(base, **{**fields, "init_from": previous, "vae_from": vae_from})
        folder = work / name
        if folder.exists():  # left by an interrupted curriculum
            shutil.rmtree(folder)
        log(f"phase {name}: {json.dumps(fields)}" + (f" from {previous}" if previous else ""))
        pretrain(folder, phase, log=log)
        logs.append(f"# Phase {name}: {json.dumps(fields)}\n" + (folder / "pretrain_log.txt").read_text())
        previous = str(folder)
    last = Path(previous)
    (last / "pretrain_log.txt").write_text("\n".join(logs))
    if out.exists():
        out.rmdir()  # empty (checked above)
    last.replace(out)  # the phase folders sit beside ``out``: one rename on the same filesystem
    shutil.rmtree(work)
    log(f"curriculum done: {', '.join(n for n, _ in phases)} -> {out}")
    return out
