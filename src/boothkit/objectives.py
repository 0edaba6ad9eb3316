"""What a training step asks the denoiser to predict: the objective, as math on tensors.

An objective takes the clean latents of a batch (B, C, h, w) and the loop's generator and returns
the noisy input, the timestep the model is given, the target and per-sample loss weights. The
loop never asks which kind it has:

- :class:`DDPM` (SD 1.x, 2.x, SDXL): the model's beta schedule, an epsilon or v target, and the
  DDPM options min-SNR-gamma and noise offset.
- :class:`RectifiedFlow` (Flux, SD 3.5, Z-Image, Flux.2): ``x_t = (1 - s) x + s n`` with target
  ``n - x``; ``s`` drawn from the model's training sigmas (uniformly, logit-normal or "mode", as
  SD 3's paper and diffusers' training scripts do), optionally shifted (by a fixed factor as SD 3's
  sampler does, or by the image's size as Flux's does), and the loss weighted none / sigma_sqrt /
  cosmap. The math is written here and pinned against diffusers' own helpers by the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from boothkit.config import LossWeighting, TimestepSampling
from boothkit.losses import compute_snr, min_snr_weights, sample_noise, sample_timesteps, training_target


@dataclass
class Noised:
    """A batch made noisy: the model's input, its timestep input, the target, per-sample weights (B,)."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    weights: torch.Tensor | None


class Objective(Protocol):
    """How a family's denoiser is trained: what ``prediction`` it makes, and how a batch is noised."""

    prediction: str  # "epsilon", "v_prediction" or "flow": what the files' metadata records

    def noised(self, latents: torch.Tensor, generator: torch.Generator) -> Noised: ...


# ----------------------------------------------------------------------------- DDPM (epsilon, v)


class DDPM:
    """The DDPM forward process of a UNet family, with its prediction type (epsilon or v)."""

    def __init__(self, scheduler: Any, *, snr_gamma: float | None = None, noise_offset: float = 0.0) -> None:
        self.scheduler = scheduler  # a DDPMScheduler with the model's betas and prediction type
        self.prediction = str(scheduler.config.prediction_type)
        self.snr_gamma = snr_gamma
        self.noise_offset = noise_offset

    def noised(self, latents: torch.Tensor, generator: torch.Generator) -> Noised:
        noise = sample_noise(latents, generator, offset=self.noise_offset)
        count = self.scheduler.config.num_train_timesteps
        timesteps = sample_timesteps(len(latents), count, generator).to(latents.device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        target = training_target(self.scheduler, latents, noise, timesteps)
        weights = None
        if self.snr_gamma:
            snr = compute_snr(self.scheduler.alphas_cumprod, timesteps)
            weights = min_snr_weights(snr, self.snr_gamma, self.prediction)
        return Noised(noisy, timesteps, target, weights)


# ----------------------------------------------------------------------------- rectified flow


def flow_density(
    n: int,
    sampling: TimestepSampling,
    generator: torch.Generator,
    *,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
) -> torch.Tensor:
    """``n`` points ``u`` in [0, 1] that pick the training sigmas: uniform, logit-normal (sigmoid of a
    normal draw), or "mode" (SD 3's mode sampling with heavier mid-range); as diffusers'
    ``compute_density_for_timestep_sampling``."""
    if sampling == "logit_normal":
        u = torch.normal(mean=logit_mean, std=logit_std, size=(n,), generator=generator)
        return torch.sigmoid(u)
    u = torch.rand(size=(n,), generator=generator)
    if sampling == "mode":
        return 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def flow_loss_weights(sigmas: torch.Tensor, weighting: LossWeighting) -> torch.Tensor:
    """Per-sample loss weights of the SD 3 paper: none, sigma_sqrt (1 / s^2) or cosmap; as diffusers'
    ``compute_loss_weighting_for_sd3``."""
    if weighting == "sigma_sqrt":
        return (sigmas**-2.0).float()
    if weighting == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
    return torch.ones_like(sigmas)


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Sigmas moved towards the noisy end by a factor (SD 3's ``shift``): s' = k s / (1 + (k - 1) s)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def resolution_mu(
    tokens: int,
    base_tokens: int = 256,
    max_tokens: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Flux's shift for an image of ``tokens`` packed latent tokens (diffusers' ``calculate_shift``)."""
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    return tokens * slope + base_shift - slope * base_tokens


def time_shift(sigmas: torch.Tensor, mu: float) -> torch.Tensor:
    """Sigmas shifted exponentially by ``mu`` (Flux's sampler): e^mu / (e^mu + (1 / s - 1))."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))


class RectifiedFlow:
    """Rectified flow on a model's training sigmas (``sigmas[i]``, ``timesteps[i] = 1000 sigmas[i]``).

    ``shift`` moves every drawn sigma by a fixed factor; ``by_resolution`` shifts it by the latent's
    size as Flux's sampler does (``tokens_per_latent_pixel``: how many packed tokens a latent pixel
    makes, 1/4 for Flux's 2x2 patches).
    """

    prediction = "flow"

    def __init__(
        self,
        sigmas: torch.Tensor,
        *,
        num_train_timesteps: int = 1000,
        sampling: TimestepSampling = "uniform",
        weighting: LossWeighting = "none",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        mode_scale: float = 1.29,
        shift: float | None = None,
        by_resolution: bool = False,
        tokens_per_latent_pixel: float = 0.25,
    ) -> None:
        self.sigmas = sigmas.float()
        self.num_train_timesteps = num_train_timesteps
        self.sampling: TimestepSampling = sampling
        self.weighting: LossWeighting = weighting
        self.logit_mean, self.logit_std, self.mode_scale = logit_mean, logit_std, mode_scale
        self.shift = shift
        self.by_resolution = by_resolution
        self.tokens_per_latent_pixel = tokens_per_latent_pixel

    def draw_sigmas(self, latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The batch's sigmas (B,): picked from the training grid as diffusers' scripts pick them
        (``indices = (u * N).long()``), then shifted if asked."""
        u = flow_density(
            len(latents),
            self.sampling,
            generator,
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
            mode_scale=self.mode_scale,
        )
        indices = (u * self.num_train_timesteps).long().clamp(0, len(self.sigmas) - 1)
        sigmas = self.sigmas[indices]
        if self.shift is not None:
            sigmas = shift_sigmas(sigmas, self.shift)
        if self.by_resolution:
            tokens = int(latents.shape[-2] * latents.shape[-1] * self.tokens_per_latent_pixel)
            sigmas = time_shift(sigmas, resolution_mu(tokens))
        return sigmas

    def noised(self, latents: torch.Tensor, generator: torch.Generator) -> Noised:
        noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
        sigmas = self.draw_sigmas(latents, generator).to(latents.device)
        s = sigmas.view(-1, *([1] * (latents.ndim - 1))).to(latents.dtype)
        noisy = (1.0 - s) * latents + s * noise
        timesteps = sigmas * self.num_train_timesteps
        return Noised(noisy, timesteps, noise - latents, flow_loss_weights(sigmas, self.weighting))


__all__ = [
    "DDPM",
    "LossWeighting",
    "Noised",
    "Objective",
    "RectifiedFlow",
    "TimestepSampling",
    "flow_density",
    "flow_loss_weights",
    "resolution_mu",
    "shift_sigmas",
    "time_shift",
]
