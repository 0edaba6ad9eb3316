"""Training-step speed and peak memory: boothkit's cached step vs the reference per-step encode.

The reference loop does what the diffusers DreamBooth example does with its defaults
(`--dataloader_num_workers 0`, no pre-computed embeddings): every step it decodes and resizes the
batch's photos, runs the VAE encoder on them and the text encoder on the prompts. A second
reference column keeps the pixels in memory, so only the VAE and text encoder run per step. boothkit encodes each image and
prompt once and samples latents from the cached posterior. Both variants run the same UNet LoRA
forward/backward and optimizer step at equal settings (batch B instance + B class images).

Each variant runs in its own subprocess so its peak memory is its own (ru_maxrss on CPU,
torch.cuda.max_memory_allocated on GPU).

  python bench/train_speed.py                 # tiny models on CPU (sd1, sdxl)
  python bench/train_speed.py --full          # full-size SD 1.5 and SDXL UNets, random weights (GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SDXL_UNET = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "attention_head_dim": [5, 10, 20],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10],
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
SD_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def build_full(family: str, root: Path) -> Path:
    """A full-size pipeline folder with random weights, from the published configs (tiny text encoders
    stand in for CLIP: their cost per step is small next to the UNet's and VAE's)."""
    from boothkit.tiny import build_tiny_pipeline

    path = build_tiny_pipeline("sdxl" if family == "sdxl" else "sd1", root / family)
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet_cfg = dict(SDXL_UNET if family == "sdxl" else SD15_UNET)
    if family == "sdxl":
        unet_cfg["cross_attention_dim"] = 80  # matches the stand-in encoders' concatenated width
        unet_cfg["projection_class_embeddings_input_dim"] = 6 * 256 + 40
    else:
        unet_cfg["cross_attention_dim"] = 32
    torch.manual_seed(0)
    UNet2DConditionModel(**unet_cfg).save_pretrained(path / "unet")
    AutoencoderKL(**SD_VAE, sample_size=unet_cfg["sample_size"] * 8).save_pretrained(path / "vae")
    return path


def photo_files(n: int) -> list[Path]:
    """n real photos (the shared DreamBooth dog and cat, ~1000 px JPEGs) or, without them, synthetic 1024 px JPEGs."""
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "dreambooth"
    found = sorted((shared / "dog").glob("*.jpg")) + sorted((shared / "cat").glob("*.jpg"))
    if len(found) < n:
        import numpy as np
        from PIL import Image

        root = Path(tempfile.mkdtemp(prefix="boothkit-bench-photos-"))
        rng = np.random.default_rng(0)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)).save(
                root / f"{i}.jpg", quality=90
            )
        found = sorted(root.glob("*.jpg"))
    return [found[i % len(found)] for i in range(n)]


def load_pixels(files: list[Path], res: int):  # type: ignore[no-untyped-def]
    """As the reference scripts' dataset does: EXIF-transpose, RGB, resize the short side (bilinear),
    centre crop, scale to [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    out = []
    for f in files:
        with Image.open(f) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            scale = res / min(im.size)
            im = im.resize(
                (max(res, round(im.width * scale)), max(res, round(im.height * scale))), Image.BILINEAR
            )
            left, top = (im.width - res) // 2, (im.height - res) // 2
            im = im.crop((left, top, left + res, top + res))
            out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1))
    return torch.stack(out)


def run_variant(args: argparse.Namespace) -> dict[str, object]:
    """One variant in this process: warm up, time `steps` optimizer steps, report steps/s and peak memory."""
    import torch
    from peft import LoraConfig

    from boothkit.data.cache import CachedImage
    from boothkit.data.order import batch_latents
    from boothkit.families import Conditioning, LoadOptions, load_model
    from boothkit.losses import dreambooth_loss, sample_noise, sample_timesteps, training_target

    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = load_model(args.model, LoadOptions(dtype=dtype, device=str(device)))
    model.vae.to(torch.float32)
    res = args.resolution
    B = args.batch
    g = torch.Generator().manual_seed(0)
    files = photo_files(2 * B)  # B instance + B class photos
    pixels = load_pixels(files, res)
    prompts = ["a photo of sks dog"] * B + ["a photo of dog"] * B
    if args.method == "full":
        params = list(model.unet.parameters())
    else:
        lora = LoraConfig(
            r=4,
            lora_alpha=4,
            init_lora_weights="gaussian",
            target_modules=["to_k", "to_q", "to_v", "to_out.0"],
        )
        model.unet.add_adapter(lora)
        params = [p for n, p in model.unet.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    if args.checkpointing:
        model.unet.enable_gradient_checkpointing()
    opt: torch.optim.Optimizer
    if args.adam8bit:
        import bitsandbytes as bnb

        opt = bnb.optim.AdamW8bit(params, lr=1e-5)
    else:
        opt = torch.optim.AdamW(params, lr=1e-5 if args.method == "full" else 1e-4)
    time_ids = torch.stack([model.time_ids((res, res), (0, 0), (res, res))] * (2 * B)).to(device)
    is_prior = torch.tensor([False] * B + [True] * B, device=device)

    cache: list[CachedImage] = []
    embeds: Conditioning | None = None
    if args.variant == "cached":
        with torch.no_grad():
            mean, std = model.encode_images(pixels.to(device))
            cache = [
                CachedImage(
                    Path("x"),
                    prompts[i],
                    bool(is_prior[i]),
                    mean[i].float().cpu(),
                    std[i].float().cpu(),
                    time_ids[i].cpu(),
                )
                for i in range(2 * B)
            ]
            embeds = model.encode_prompts(prompts)

    def step() -> None:
        if args.variant == "cached":
            latents, _ = batch_latents(cache, model, g, flip=False)
            latents = latents.to(device)
            cond = embeds
        else:
            # The reference loop (diffusers' DreamBooth example, dataloader_num_workers=0): decode and
            # resize the photos, run the VAE and the text encoder, every step.
            batch = load_pixels(files, res) if args.variant == "reference" else pixels
            with torch.no_grad():
                mean, std = model.encode_images(batch.to(device))
                latents = model.scale_latents(mean + std * torch.randn(mean.shape, generator=g).to(device))
                cond = model.encode_prompts(prompts)
        assert cond is not None
        noise = sample_noise(latents, g)
        t = sample_timesteps(2 * B, 1000, g).to(device)
        noisy = model.noise_scheduler.add_noise(latents, noise, t)
        target = training_target(model.noise_scheduler, latents, noise, t)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            pred = model.predict(noisy.to(dtype), t, cond.to(device, dtype), time_ids)
        loss = dreambooth_loss(pred, target, is_prior, prior_weight=1.0).total
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "variant": args.variant,
        "method": args.method,
        "checkpointing": args.checkpointing,
        "adam8bit": args.adam8bit,
        "steps_per_s": args.steps / seconds,
        "peak_mib": peak / 2**20,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--full", action="store_true", help="full-size SD 1.5 / SDXL UNets (needs a GPU to be quick)"
    )
    parser.add_argument("--cpu", action="store_true", help="force CPU")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--only", choices=["sd15", "sdxl"], help="with --full: one family only")
    parser.add_argument("--res", type=int, help="with --full: override the resolution (e.g. 256 on CPU)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="with --full: batch sizes")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--variant", choices=["cached", "reference", "reference-in-memory"], help=argparse.SUPPRESS
    )
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--resolution", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--adam8bit", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=["lora", "full"], default="lora", help=argparse.SUPPRESS)
    parser.add_argument(
        "--full-finetune",
        action="store_true",
        help="full fine-tune variants (gradient checkpointing, 8-bit Adam) instead of cached vs reference",
    )
    args = parser.parse_args()
    if args.variant:  # child process
        print(json.dumps(run_variant(args)))
        return

    import torch

    from boothkit.tiny import build_tiny_pipeline

    root = Path(tempfile.mkdtemp(prefix="boothkit-bench-"))
    cases: list[tuple[str, Path, int, int]] = []
    if args.full:
        for family, res in (("sd15", 512), ("sdxl", 1024)):
            if args.only and family != args.only:
                continue
            path = build_full(family, root)
            cases += [(f"{family} full-size", path, args.res or res, b) for b in args.batches]
    else:
        for family in ("sd1", "sdxl"):
            path = build_tiny_pipeline(family, root / family)  # type: ignore[arg-type]
            cases += [(f"{family} tiny", path, r, 1) for r in (32, 64)]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.cpu else None
    if args.full_finetune:
        full_finetune_table(args, cases, gpu)
        return
    print(
        f"# {platform.node()} | {gpu or platform.processor() or platform.machine()} | "
        f"{os.cpu_count()} cores | torch {torch.__version__} | steps {args.steps}"
    )
    print(
        "| model | res | batch (inst+class) | reference steps/s | reference, pixels in memory | boothkit steps/s | "
        "speed-up | speed-up vs in-memory | reference peak MiB | boothkit peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, path, res, batch in cases:
        results = {}
        for variant in ("reference", "reference-in-memory", "cached"):
            results[variant] = run_child(args, variant, path, res, batch)
        ref, mem, ours = results["reference"], results["reference-in-memory"], results["cached"]
        print(
            f"| {name} | {res} | {batch}+{batch} | {ref['steps_per_s']:.2f} | {mem['steps_per_s']:.2f} | "
            f"{ours['steps_per_s']:.2f} | {ours['steps_per_s'] / ref['steps_per_s']:.2f}x | "
            f"{ours['steps_per_s'] / mem['steps_per_s']:.2f}x | {ref['peak_mib']:.0f} | {ours['peak_mib']:.0f} |",
            flush=True,
        )


def run_child(
    args: argparse.Namespace,
    variant: str,
    path: Path,
    res: int,
    batch: int,
    extra: list[str] | None = None,
) -> dict[str, Any]:
    """Run one variant in its own process (so its peak memory is its own); its JSON result."""
    cmd = [sys.executable, __file__, "--variant", variant, "--model", str(path), "--resolution", str(res)]
    cmd += ["--batch", str(batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += (extra or []) + ["--cpu"] * args.cpu
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def full_finetune_table(
    args: argparse.Namespace, cases: list[tuple[str, Path, int, int]], gpu: str | None
) -> None:
    """Full fine-tune of the UNet: steps/s and peak memory with/without checkpointing and 8-bit Adam."""
    import importlib.util

    import torch

    variants = [(False, False), (True, False)]
    if gpu and importlib.util.find_spec("bitsandbytes"):
        variants += [(False, True), (True, True)]
    print(
        f"# full fine-tune | {platform.node()} | {gpu or platform.machine()} | torch {torch.__version__} | "
        f"steps {args.steps}"
    )
    print("| model | res | batch (inst+class) | grad. checkpointing | 8-bit Adam | steps/s | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for name, path, res, batch in cases:
        for ckpt, adam8 in variants:
            extra = ["--method", "full"] + ["--checkpointing"] * ckpt + ["--adam8bit"] * adam8
            r = run_child(args, "cached", path, res, batch, extra)
            print(
                f"| {name} | {res} | {batch}+{batch} | {'yes' if ckpt else 'no'} | {'yes' if adam8 else 'no'} | "
                f"{r['steps_per_s']:.3g} | {r['peak_mib']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
