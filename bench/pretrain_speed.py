"""Toy-model pretraining speed: fresh renders every batch vs the encoded pool.

A pretraining step is the data (scenes, latents) and the UNet + text-encoder update. Without a
pool the data is rendered and VAE-encoded every batch; with ``--pool`` the renders are encoded
once (rendered by worker processes) and a batch is a draw from the cached posteriors. The update
is the same either way, so the table times the two data paths, the one-off pool cost, and the
update of the toy model's UNet (3 levels), all in one run.

  python bench/pretrain_speed.py                 # CPU, batch 32
  python bench/pretrain_speed.py --device cuda --batch-size 256
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402

from boothkit.toyworld.captions import training_caption, training_scene  # noqa: E402
from boothkit.toyworld.model import (  # noqa: E402
    build_components,
    caption_ids,
    load_vae,
    noise_schedule,
    shipped_model_dir,
)
from boothkit.toyworld.pretrain import diffusion_loss, encode_pool, fresh_latents  # noqa: E402
from boothkit.toyworld.settings import PretrainSettings  # noqa: E402


def seconds(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    """Mean wall time of ``fn`` over ``reps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - start) / reps


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def update_seconds(settings: PretrainSettings, device: str, batch: int, reps: int) -> tuple[float, float]:
    """Seconds per UNet + text-encoder update, and the UNet's parameters (M)."""
    from diffusers import DDPMScheduler

    with tempfile.TemporaryDirectory() as tmp:
        parts = build_components(settings, Path(tmp) / "tokenizer")
    unet, text = parts["unet"].to(device), parts["text_encoder"].to(device)
    params = [*unet.parameters(), *text.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-4)
    sched = DDPMScheduler(**noise_schedule())
    rng = random.Random(0)
    latents = torch.randn(batch, 4, 24, 24, device=device)
    texts = [training_caption(training_scene(rng), rng, settings) for _ in range(batch)]
    ids = caption_ids(parts["tokenizer"], texts)

    def step() -> None:
        loss = diffusion_loss(unet, text, ids, latents, sched, settings.snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return seconds(step, reps, warmup=2), sum(p.numel() for p in unet.parameters()) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--pool", type=int, default=1024, help="renders to encode for the pool timing")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, max(1, (os.cpu_count() or 1) - 1)])
    args = ap.parse_args()
    device, batch = args.device, args.batch_size

    vae = load_vae(shipped_model_dir()).to(device).eval()
    scaling = float(vae.config.scaling_factor)
    rng = random.Random(0)
    fresh = seconds(lambda: fresh_latents(vae, rng, batch, scaling, device), args.reps)
    pool_times = {}
    pool = None
    for workers in sorted(set(args.workers)):
        t0 = time.perf_counter()
        pool = encode_pool(vae, args.pool, random.Random(1), device, workers=workers)
        sync()
        pool_times[workers] = (time.perf_counter() - t0) / args.pool
    assert pool is not None
    drawn = seconds(lambda: pool.sample(rng, batch, scaling), args.reps)
    updates = {"3 levels": update_seconds(PretrainSettings(), device, batch, max(3, args.reps // 2))}

    threads = torch.get_num_threads()
    print(f"# {platform.machine()} {device}, torch {torch.__version__}, {threads} threads, batch {batch}")
    print()
    print("| data path | seconds per batch |")
    print("|---|---|")
    print(f"| fresh: render + VAE-encode {batch} images | {fresh:.4f} |")
    print(f"| pool: draw {batch} from the encoded posteriors | {drawn:.5f} |")
    for workers, per_image in pool_times.items():
        where = f"{workers} render process(es) beside the encoder" if workers else "rendered in-process"
        print(f"| (one-off) pool of {args.pool}, {where}: per image | {per_image:.5f} |")
    print()
    print("| UNet layout | UNet M params | update s | step s, fresh | step s, pool | pool speed-up |")
    print("|---|---|---|---|---|---|")
    for name, (update, params) in updates.items():
        print(
            f"| {name} | {params:.2f} | {update:.3f} | {update + fresh:.3f} | {update + drawn:.3f} "
            f"| {(update + fresh) / (update + drawn):.2f}x |"
        )


if __name__ == "__main__":
    main()
