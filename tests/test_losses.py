import torch
from diffusers import DDPMScheduler

from boothkit.losses import compute_snr, dreambooth_loss, min_snr_weights, sample_noise, training_target


def _scheduler(kind: str) -> DDPMScheduler:
    return DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=kind
    )


def test_epsilon_target_is_the_noise() -> None:
    x, n = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 900])
    assert torch.equal(training_target(_scheduler("epsilon"), x, n, t), n)


def test_v_target_equals_get_velocity_and_the_formula() -> None:
    s = _scheduler("v_prediction")
    x, n = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    v = training_target(s, x, n, t)
    assert torch.equal(v, s.get_velocity(x, n, t))
    a = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(v, a.sqrt() * n - (1 - a).sqrt() * x)


def test_prior_term_matches_hand_computation() -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    is_prior = torch.tensor([False, False, True, True])
    terms = dreambooth_loss(pred, target, is_prior, prior_weight=0.7)
    inst = ((pred[:2] - target[:2]) ** 2).mean()
    prior = ((pred[2:] - target[2:]) ** 2).mean()
    torch.testing.assert_close(terms.instance, inst)
    assert terms.prior is not None
    torch.testing.assert_close(terms.prior, prior)
    torch.testing.assert_close(terms.total, inst + 0.7 * prior)


def test_no_prior_samples_means_instance_loss_only() -> None:
    pred, target = torch.ones(2, 4, 2, 2), torch.zeros(2, 4, 2, 2)
    terms = dreambooth_loss(pred, target, torch.tensor([False, False]), prior_weight=1.0)
    assert terms.prior is None and terms.total.item() == 1.0


def test_min_snr_weights() -> None:
    s = _scheduler("epsilon")
    t = torch.tensor([1, 999])
    snr = compute_snr(s.alphas_cumprod, t)
    w = min_snr_weights(snr, 5.0, "epsilon")
    assert snr[0] > 5 and torch.isclose(w[0], 5.0 / snr[0])  # high SNR (small t) is down-weighted
    assert snr[1] < 5 and w[1] == 1.0
    wv = min_snr_weights(snr, 5.0, "v_prediction")
    torch.testing.assert_close(wv, torch.clamp(snr, max=5.0) / (snr + 1))


def test_noise_offset_is_seeded_and_shifts_channels() -> None:
    x = torch.zeros(2, 4, 8, 8)
    a = sample_noise(x, torch.Generator().manual_seed(1), offset=0.5)
    b = sample_noise(x, torch.Generator().manual_seed(1), offset=0.5)
    c = sample_noise(x, torch.Generator().manual_seed(1), offset=0.0)
    assert torch.equal(a, b) and not torch.equal(a, c)
