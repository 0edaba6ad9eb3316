"""The math of a DreamBooth step, as pure functions of tensors and explicit generators."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def sample_noise(latents: torch.Tensor, generator: torch.Generator, *, offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise shaped like `latents`, plus an optional per-channel offset.

    The offset (Guttenberg's "noise offset") lets the model learn very dark and very bright images,
    which zero-mean noise alone never teaches it.
    """
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents)
    if offset:
        b, c = latents.shape[:2]
        noise = noise + offset * torch.randn((b, c, 1, 1), generator=generator, dtype=torch.float32).to(
            latents
        )
    return noise


def sample_timesteps(batch: int, num_train_timesteps: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, num_train_timesteps, (batch,), generator=generator, dtype=torch.long)


def training_target(
    scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """What the UNet should predict: the noise (epsilon models) or the velocity (v-prediction models)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction type {kind!r}")


def compute_snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep."""
    a = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return a / (1.0 - a)


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-gamma (Hang et al. 2023), for an MSE on the model's target.

    For epsilon the weight is min(snr, gamma) / snr; a v target already carries a factor snr + 1.
    """
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    return clipped / snr


@dataclass
class LossTerms:
    total: torch.Tensor
    instance: torch.Tensor
    prior: torch.Tensor | None


def dreambooth_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    is_prior: torch.Tensor,
    *,
    prior_weight: float,
    weights: torch.Tensor | None = None,
) -> LossTerms:
    """Instance MSE + prior_weight * prior MSE (DreamBooth, Ruiz et al. 2023, eq. 2).

    prediction, target: (B, C, H, W); is_prior: (B,) bool, True for class images; weights: (B,)
    optional per-sample weights (min-SNR). Each term is the mean over its own samples, so the
    balance does not depend on how many of each the batch holds.
    """
    per_sample = (
        F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(dim=1)
    )  # (B,)
    if weights is not None:
        per_sample = per_sample * weights
    instance = per_sample[~is_prior].mean()
    if bool(is_prior.any()):
        prior = per_sample[is_prior].mean()
        return LossTerms(instance + prior_weight * prior, instance, prior)
    return LossTerms(instance, instance, None)
