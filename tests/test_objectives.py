"""The objectives equal the reference implementations' formulas, for the same latents, noise and draws."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from boothkit.losses import compute_snr, min_snr_weights
from boothkit.objectives import (
    DDPM,
    RectifiedFlow,
    flow_density,
    flow_loss_weights,
    resolution_mu,
    shift_sigmas,
    time_shift,
)


@pytest.mark.parametrize("sampling", ["uniform", "logit_normal", "mode"])
def test_sigma_sampling_equals_diffusers(sampling: str) -> None:
    scheme = {"uniform": "none"}.get(sampling, sampling)
    ours = flow_density(
        64, sampling, torch.Generator().manual_seed(3), logit_mean=0.2, logit_std=1.3, mode_scale=1.29
    )  # type: ignore[arg-type]
    theirs = compute_density_for_timestep_sampling(
        scheme, 64, logit_mean=0.2, logit_std=1.3, mode_scale=1.29, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("weighting", ["none", "sigma_sqrt", "cosmap"])
def test_loss_weights_equal_diffusers(weighting: str) -> None:
    sigmas = torch.linspace(0.01, 1.0, 50)
    assert torch.allclose(
        flow_loss_weights(sigmas, weighting), compute_loss_weighting_for_sd3(weighting, sigmas)
    )  # type: ignore[arg-type]


def test_shifts_equal_the_schedulers() -> None:
    base = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    shifted = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    assert torch.allclose(shift_sigmas(base.sigmas, 3.0), shifted.sigmas, atol=1e-6)
    for tokens in (256, 1024, 4096):
        assert resolution_mu(tokens) == pytest.approx(calculate_shift(tokens, 256, 4096, 0.5, 1.15))
    sigmas = torch.linspace(0.05, 1.0, 20)
    mu = resolution_mu(1024)
    assert torch.allclose(time_shift(sigmas, mu), base._time_shift_exponential(mu, 1.0, sigmas))


@pytest.mark.parametrize(
    ("sampling", "weighting", "shift"), [("uniform", "none", 1.0), ("logit_normal", "sigma_sqrt", 3.0)]
)
def test_rectified_flow_equals_the_reference_scripts_step(
    sampling: str, weighting: str, shift: float
) -> None:
    """train_dreambooth_lora_flux.py / _sd3.py, step by step: noise, u, the scheduler's timesteps and
    sigmas at (u * N).long(), x_t = (1 - s) x + s n, target n - x, the SD3 loss weighting."""
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    objective = RectifiedFlow(scheduler.sigmas, sampling=sampling, weighting=weighting)  # type: ignore[arg-type]
    ours = objective.noised(latents, torch.Generator().manual_seed(7))

    g = torch.Generator().manual_seed(7)
    noise = torch.randn(latents.shape, generator=g)
    u = compute_density_for_timestep_sampling(
        sampling if sampling != "uniform" else "none",
        3,
        logit_mean=0.0,
        logit_std=1.0,
        mode_scale=1.29,
        generator=g,
    )
    indices = (u * scheduler.config.num_train_timesteps).long()
    timesteps = scheduler.timesteps[indices]
    sigmas = scheduler.sigmas[indices].view(-1, 1, 1, 1)
    assert torch.allclose(ours.noisy, (1.0 - sigmas) * latents + sigmas * noise)
    assert torch.allclose(ours.timesteps, timesteps)
    assert torch.equal(ours.target, noise - latents)
    assert ours.weights is not None
    expected = compute_loss_weighting_for_sd3(weighting, sigmas).flatten()
    assert torch.allclose(ours.weights, expected)


def test_the_resolution_shift_moves_larger_images_to_more_noise() -> None:
    flow = RectifiedFlow(FlowMatchEulerDiscreteScheduler().sigmas, by_resolution=True)
    small = flow.draw_sigmas(torch.zeros(64, 16, 32, 32), torch.Generator().manual_seed(1))
    large = flow.draw_sigmas(torch.zeros(64, 16, 128, 128), torch.Generator().manual_seed(1))
    assert (large > small).all() and (small > 0).all() and (large <= 1).all()


def test_ddpm_is_the_loops_former_inline_computation() -> None:
    """The refactor into an objective changed no draw and no number (resume stays bit-identical)."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ours = DDPM(scheduler, snr_gamma=5.0, noise_offset=0.05).noised(latents, torch.Generator().manual_seed(9))

    g = torch.Generator().manual_seed(9)
    noise = torch.randn(latents.shape, generator=g) + 0.05 * torch.randn((2, 4, 1, 1), generator=g)
    t = torch.randint(0, 1000, (2,), generator=g)
    assert torch.equal(ours.noisy, scheduler.add_noise(latents, noise, t))
    assert torch.equal(ours.target, scheduler.get_velocity(latents, noise, t))
    assert ours.weights is not None
    assert torch.equal(
        ours.weights, min_snr_weights(compute_snr(scheduler.alphas_cumprod, t), 5.0, "v_prediction")
    )
    assert math.isfinite(float(ours.weights.sum()))


def test_flow_settings_are_refused_for_a_ddpm_family(tiny_model, photos, tmp_path, capsys) -> None:
    from conftest import run_cli, train_args

    args = train_args(tiny_model("sd1"), photos, tmp_path / "run")
    for flag in (["--timestep-sampling", "logit_normal"], ["--flow-shift", "3"], ["--train-guidance", "3.5"]):
        code, _, err = run_cli(capsys, *args, *flag)
        assert code == 2 and f"{flag[0]} does not apply to SD 1.x" in err, err
    assert not (tmp_path / "run").exists()
