"""How much of a toy-world image the noise schedule leaves readable at its noisiest steps.

A model learns to take from x_t whatever x_t still shows at the high-noise steps, and sampling
starts from pure noise, where those things are random. This script encodes fresh renders with
the shipped VAE, noises them at the timestep where sampling starts (and at the last training
step), and fits least-squares linear probes on half of them: position from the 6x6-pooled x_t,
background from the per-channel mean and std. It reports the probes' accuracy on the other half
for Stable Diffusion's schedule and for the zero-terminal-SNR one (`toyworld pretrain --schedule`).

    python bench/schedule_leak.py [--images 2000]
"""

from __future__ import annotations

import argparse
import random

import torch
import torch.nn.functional as F

from boothkit.toyworld.model import SCHEDULES, load_vae, noise_schedule, sampling_scheduler, shipped_model_dir
from boothkit.toyworld.pretrain import encode_pool


def probe(features: torch.Tensor, labels: torch.Tensor, n_train: int) -> float:
    """Accuracy on the held-back rows of a least-squares one-vs-all linear classifier."""
    x = torch.cat([features, torch.ones(len(features), 1)], dim=1).double()
    y = F.one_hot(labels).double()
    w = torch.linalg.lstsq(x[:n_train], y[:n_train]).solution
    return float((x[n_train:] @ w).argmax(1).eq(labels[n_train:]).double().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from diffusers import DDPMScheduler

    torch.manual_seed(args.seed)
    vae = load_vae(shipped_model_dir())
    pool = encode_pool(vae, args.images, random.Random(args.seed), "cpu")
    latents = pool.mean * float(vae.config.scaling_factor)
    n_train = args.images // 2

    def labels(attribute: str) -> torch.Tensor:
        values = [getattr(s, attribute) for s in pool.scenes]
        names = sorted(set(values))
        return torch.tensor([names.index(v) for v in values])

    position, background = labels("position"), labels("background")
    chance = (1 / len(set(position.tolist())), 1 / len(set(background.tolist())))
    print(f"{args.images} renders; chance: position {chance[0]:.2f}, background {chance[1]:.2f}")
    print("| schedule | t | sqrt(alpha_bar) | position probe | background probe |")
    print("|---|---|---|---|---|")
    for kind in SCHEDULES:
        sched = DDPMScheduler(**noise_schedule(kind))
        ddim = sampling_scheduler(kind)
        ddim.set_timesteps(20)
        for t in sorted({int(ddim.timesteps[0]), 999}):
            a = sched.alphas_cumprod[t]
            noisy = a.sqrt() * latents + (1 - a).sqrt() * torch.randn_like(latents)
            pos = probe(F.adaptive_avg_pool2d(noisy, 6).flatten(1), position, n_train)
            stats = torch.cat([noisy.mean(dim=(2, 3)), noisy.std(dim=(2, 3))], dim=1)
            bg = probe(stats, background, n_train)
            first = " (first of 20 DDIM steps)" if t == int(ddim.timesteps[0]) else ""
            print(f"| {kind} | {t}{first} | {float(a.sqrt()):.4f} | {pos:.2f} | {bg:.2f} |")


if __name__ == "__main__":
    main()
