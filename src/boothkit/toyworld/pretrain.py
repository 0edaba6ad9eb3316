"""Pretraining the toy base model (:mod:`boothkit.toyworld.model`) on the toy world's captions.

Recipe (:func:`pretrain`):

1. a CLIP-style BPE tokenizer trained on the world's captions; a few identifier words
   ("sks", "zwx", ...; :data:`~boothkit.toyworld.captions.TOKENIZER_IDENTIFIERS`) are in its
   corpus so each is one piece, but no training caption uses them;
2. the VAE, MSE + L1 + a tiny KL term, checked by decoding fresh renders and measuring them with
   the oracles;
3. UNet + text encoder together on the epsilon loss over scaled latents (SD's 1000-step
   scaled-linear DDPM schedule, min-SNR weighting, an EMA of the weights), captions with
   attributes left out at random and 10% empty captions (:mod:`boothkit.toyworld.captions`);
4. optionally, the decoder alone (encoder frozen) on renders whose objects weigh more.

The shipped model continues this first phase through the phases of
:mod:`boothkit.toyworld.curriculum`.

Every ``eval_every`` steps the EMA model is evaluated on held-out captions, saved to ``output``
(fp16 safetensors) if it is the best so far, and the log line appended to
``output/pretrain_log.txt``; an interrupted run therefore leaves a usable model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from boothkit.io import require_empty_folder
from boothkit.losses import compute_snr, min_snr_weights, training_target
from boothkit.toyworld.captions import (
    HELD_OUT_BACKGROUNDS,
    HELD_OUT_COLORS,
    INDIVIDUALS,
    NamedScene,
    individual_paint,
    training_caption,
    training_scene,
)
from boothkit.toyworld.model import (
    RESOLUTION,
    assemble,
    build_components,
    caption_ids,
    evaluate_pipeline,
    folder_size,
    load_components,
    load_vae,
    noise_schedule,
    prompt_fidelity,
    sampling_scheduler,
    save_model,
    to_images,
    to_tensor,
)
from boothkit.toyworld.render import coverage, placement, render, render_pattern
from boothkit.toyworld.scene import Scene
from boothkit.toyworld.settings import PretrainSettings
from boothkit.toyworld.subjects import multicolor_paint

# --------------------------------------------------------------------------- data


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


# --------------------------------------------------------------------------- the pool


def pool_workers(asked: int | None, cores: int | None = None) -> int:
    """Render processes for the pool: as asked, else all cores but the encoder's, none on two cores
    or fewer (there one render process beside the encoder is slower than none: BENCHMARKS.md)."""
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


# --------------------------------------------------------------------------- the loss


def floored_min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma weights with, for the v target, the x0 weight floored at one.

    In x0 terms min-SNR weighs a timestep min(snr, gamma). :func:`boothkit.losses.min_snr_weights`
    (what ``boothkit train`` uses) keeps that for v too, min(snr, gamma) / (snr + 1), which is 0 at
    the zero-SNR step. Here the v target's weight is min(snr + 1, gamma) / (snr + 1), at least one
    in x0 terms, so that the high-noise steps, where the layout is decided, keep their weight and
    the zero-SNR step of the zero-snr schedule is trained. The epsilon target's weights are the
    same as ``min_snr_weights``.
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
    weight = floored_min_snr_weights(
        compute_snr(noise_sched.alphas_cumprod, t), snr_gamma, noise_sched.config.prediction_type
    )
    return (weight * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()


# --------------------------------------------------------------------------- the autoencoder


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


# --------------------------------------------------------------------------- checks and the loop


def check_share(flag: str, value: float) -> None:
    """Refuse a share (``flag``'s value) outside 0..1."""
    from boothkit.errors import BoothkitError

    if not 0.0 <= value <= 1.0:
        raise BoothkitError(f"{flag} {value}: a share between 0 and 1")


def check_sources(settings: PretrainSettings) -> None:
    """Refuse --vae-from / --init-from folders that hold no toy model, and counts, shares and
    timesteps out of range, before anything is written."""
    from boothkit.errors import BoothkitError
    from boothkit.flags import check_numbers

    check_numbers(settings)  # the floats' ranges, again: a field may have been set since
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
        *("steps", "batch_size", "vae_batch_size", "width", "text_width"),
        *("eval_every", "eval_images", "eval_steps"),
    )
    for name in positive:
        if getattr(settings, name) <= 0:
            raise BoothkitError(f"--{name.replace('_', '-')} must be positive, got {getattr(settings, name)}")
    for name in ("vae_steps", "decoder_steps", "pool"):
        if getattr(settings, name) < 0:
            raise BoothkitError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(settings, name)}")

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
    say(
        f"done: kept step {best_step} ({s.keep}), held-out fidelity {best:.3f}; total {(time.time() - started) / 60:.1f} min"
    )
    return out
