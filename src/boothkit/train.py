"""The DreamBooth training loop, top to bottom.

Inside a step there are three kinds of calls: the family encodes and predicts, `losses` computes,
the method decides what trains and what is saved. Everything before the loop is preparation
(check photos, load the model, make or reuse class images, cache latents and prompt embeddings);
everything after it is output (weights, samples, loss curve, summary).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from boothkit.config import TrainConfig, to_toml
from boothkit.data.cache import CachedImage, encode_images, encode_prompt_set
from boothkit.errors import BoothkitError
from boothkit.families import Conditioning, Family, LoadOptions, load_model
from boothkit.io import atomic_save_image, atomic_write_json, atomic_write_text
from boothkit.losses import (
    compute_snr,
    dreambooth_loss,
    min_snr_weights,
    sample_noise,
    sample_timesteps,
    training_target,
)
from boothkit.methods import TrainingMethod, get_method

RUN_MARKER = "boothkit_run.json"
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class TrainResult:
    output: Path
    weights: list[Path]
    steps: int
    seconds: float
    final_loss: float
    samples: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- preparation


def prepare_output(folder: Path) -> None:
    """Create the run folder; refuse to write into someone else's non-empty folder or a finished run."""
    marker = folder / RUN_MARKER
    if folder.exists():
        if not folder.is_dir():
            raise BoothkitError(f"--output {folder} exists and is not a folder")
        if any(folder.iterdir()):
            if not marker.exists():
                raise BoothkitError(
                    f"--output {folder} is not empty and is not a boothkit run folder; nothing was written",
                    hint="choose a new or empty folder",
                )
            state = json.loads(marker.read_text()).get("status")
            if state == "complete":
                raise BoothkitError(
                    f"--output {folder} already holds a finished run; nothing was overwritten",
                    hint="choose another --output folder",
                )
    folder.mkdir(parents=True, exist_ok=True)


def _write_marker(folder: Path, status: str, **extra: Any) -> None:
    from boothkit import __version__

    atomic_write_json(folder / RUN_MARKER, {"status": status, "boothkit": __version__, **extra})


def check_instance_images(config: TrainConfig) -> list[Path]:
    from boothkit.data.images import check_folder, parse_color

    folder = Path(config.images).expanduser()
    if not folder.is_dir():
        raise BoothkitError(
            f"--images {folder} is not a folder", hint="pass the folder that holds your photos"
        )
    report = check_folder(
        folder, resolution=config.resolution or 512, alpha_background=parse_color(config.alpha_background)
    )
    usable = report.usable()
    if report.rejected() and not config.skip_invalid:
        raise BoothkitError(
            f"some files in {folder} can't be used:\n{report.format()}",
            hint="fix or remove the rejected files, or pass --skip-invalid to train on the rest",
        )
    if not usable:
        raise BoothkitError(
            f"--images {folder} holds no usable images",
            hint="add 3-20 photos of the subject (jpg, png, webp)",
        )
    return usable


def images_hash(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def token_warnings(model: Family, token: str) -> list[str]:
    """A token the tokenizer splits into pieces binds the subject to several tokens' meanings."""
    out = []
    for tokenizer in model.tokenizers:
        pieces = tokenizer.tokenize(token)
        if len(pieces) != 1:
            out.append(
                f"token {token!r} is split by the tokenizer into {len(pieces)} pieces {pieces}; "
                "a rare single-piece token (e.g. sks, zwx, ohwx) binds the subject more cleanly"
            )
            break
    return out


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BoothkitError(f"--device {name}: no CUDA device is available", hint="use --device cpu")
    return device


def class_images(config: TrainConfig, model: Family, resolution: int) -> list[Path]:
    """The prior-preservation images: the user's own folder, or the bank (generated as needed)."""
    from boothkit.data.captions import render_prompt

    if config.class_dir:
        from boothkit.data.images import check_folder

        report = check_folder(Path(config.class_dir).expanduser(), resolution=resolution)
        paths = report.usable()
        if not paths:
            raise BoothkitError(f"--class-dir {config.class_dir} holds no usable images")
        return paths[: config.class_images] if config.class_images else paths
    from boothkit.prior import BankKey, ensure_class_images

    key = BankKey(
        model=model.source.fingerprint,
        prompt=render_prompt(config.class_prompt, token=config.token, class_noun=config.class_noun),
        negative_prompt=config.class_negative,
        resolution=resolution,
        sampler=type(model.pipeline().scheduler).__name__,
        steps=config.class_steps,
        guidance=config.class_guidance,
        seed=config.seed,
    )
    pipe = model.pipeline()
    pipe.set_progress_bar_config(disable=True)
    root = Path(config.bank_dir).expanduser() if config.bank_dir else None
    return ensure_class_images(pipe, key, config.class_images, root=root, batch_size=config.class_batch_size)


# ----------------------------------------------------------------------------- data order


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A fresh permutation of n items per epoch, a pure function of (seed, epoch): resumable."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def take(n: int, seed: int, position: int, count: int) -> list[int]:
    """Items position..position+count of the endless stream of per-epoch permutations."""
    out = []
    for pos in range(position, position + count):
        out.append(epoch_order(n, seed, pos // n)[pos % n])
    return out


def batch_latents(
    items: list[CachedImage], model: Family, generator: torch.Generator, flip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample latents (B, C, h, w) from the cached posteriors; returns them with the time ids (B, k)."""
    means, stds, ids = [], [], []
    for item in items:
        use_flip = flip and item.flipped_mean is not None and bool(torch.rand((), generator=generator) < 0.5)
        means.append(item.flipped_mean if use_flip else item.mean)
        stds.append(item.flipped_std if use_flip else item.std)
        ids.append(item.flipped_time_ids if use_flip else item.time_ids)
    mean, std = torch.stack(means), torch.stack(stds)  # type: ignore[arg-type]
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    return model.scale_latents(mean + std * eps), torch.stack(ids)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the loop


def train(
    config: TrainConfig,
    *,
    model: Family | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Run DreamBooth training as configured. `model` may be passed pre-loaded (it is trained in place)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from boothkit.data.captions import instance_prompts

    started = time.time()
    out = Path(config.output).expanduser()
    images = check_instance_images(config)  # before the model loads: bad photos fail in seconds
    prepare_output(out)
    _write_marker(out, "running", started=datetime.now(timezone.utc).isoformat())
    atomic_write_text(out / "config.toml", to_toml(config))

    device = resolve_device(config.device)
    if config.mixed_precision == "fp16" and device.type != "cuda":
        raise BoothkitError("--mixed-precision fp16 needs a CUDA device", hint="use bf16 or no on CPU")
    from accelerate.state import AcceleratorState

    # accelerate keeps one global state per process; train() may run several times in one process.
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=device.type == "cpu")
    weight_dtype = DTYPES[config.mixed_precision]

    if model is None:
        options = LoadOptions(config.model_config, config.prediction_type, torch.float32, str(device))
        model = load_model(config.model, options)
    warnings = token_warnings(model, config.token)
    for w in warnings:
        log(f"warning: {w}")
    resolution = config.resolution or model.default_resolution
    if resolution % (model.vae_scale_factor * 2):
        raise BoothkitError(
            f"--resolution {resolution} must be a multiple of {model.vae_scale_factor * 2} for this model"
        )

    # Prior images are made by the base model, before any adapter is attached.
    prior_paths = class_images(config, model, resolution) if config.uses_prior else []

    prompts = instance_prompts(
        images,
        Path(config.images).expanduser(),
        template=config.instance_prompt,
        token=config.token,
        class_noun=config.class_noun,
    )
    from boothkit.data.captions import render_prompt

    class_prompt = render_prompt(config.class_prompt, token=config.token, class_noun=config.class_noun)
    from boothkit.data.images import parse_color

    bg = parse_color(config.alpha_background)
    instances = encode_images(
        model,
        images,
        prompts,
        is_prior=False,
        resolution=resolution,
        flip=config.flip,
        crop=config.crop,
        alpha_background=bg,
        seed=config.seed,
    )
    priors = encode_images(
        model,
        prior_paths,
        [class_prompt] * len(prior_paths),
        is_prior=True,
        resolution=resolution,
        flip=False,
        seed=config.seed,
    )

    # Frozen weights in the compute dtype; the method's trainable weights stay fp32.
    model.unet.to(dtype=weight_dtype)
    for encoder in model.text_encoders:
        encoder.to(dtype=weight_dtype)
    method: TrainingMethod = get_method(config.method)
    groups = method.setup(model, config)
    embeddings = {} if method.trains_text_encoder else encode_prompt_set(model, [*prompts, class_prompt])
    if config.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
        if method.trains_text_encoder:
            for encoder in model.text_encoders:
                encoder.gradient_checkpointing_enable()
    model.unet.train()
    params = [p for g in groups for p in g["params"]]

    optimizer = make_optimizer(groups, config)
    from diffusers.optimization import get_scheduler

    lr_scheduler = get_scheduler(
        config.lr_schedule, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
    )
    optimizer = accelerator.prepare_optimizer(optimizer)  # grad scaler for fp16, nothing on CPU

    metadata = run_metadata(config, model, images, resolution)
    logger = RunLogger(out)
    generator = torch.Generator().manual_seed(config.seed)
    alphas_cumprod = model.noise_scheduler.alphas_cumprod
    num_t = model.noise_scheduler.config.num_train_timesteps
    B = config.batch_size
    sample_files: list[Path] = []
    loss_value = math.nan

    bar = tqdm(range(config.steps), desc="training", unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        step_loss = step_instance = step_prior = 0.0
        for micro in range(config.grad_accum):
            position = (step * config.grad_accum + micro) * B
            batch = [instances[i] for i in take(len(instances), config.seed, position, B)]
            if priors:
                batch += [priors[i] for i in take(len(priors), config.seed + 1, position, B)]
            latents, time_ids = batch_latents(batch, model, generator, config.flip)  # (2B, C, h, w)
            latents = latents.to(device)
            noise = sample_noise(latents, generator, offset=config.noise_offset)
            timesteps = sample_timesteps(len(batch), num_t, generator).to(device)
            noisy = model.noise_scheduler.add_noise(latents, noise, timesteps)
            target = training_target(model.noise_scheduler, latents, noise, timesteps)
            texts = [item.prompt for item in batch]
            is_prior = torch.tensor([item.is_prior for item in batch], device=device)
            with accelerator.autocast():
                cond = (
                    model.encode_prompts(texts)
                    if method.trains_text_encoder
                    else Conditioning.cat([embeddings[t] for t in texts]).to(device, weight_dtype)
                )
                prediction = model.predict(noisy.to(weight_dtype), timesteps, cond, time_ids)
            weights = None
            if config.snr_gamma:
                weights = min_snr_weights(
                    compute_snr(alphas_cumprod, timesteps), config.snr_gamma, model.prediction_type
                )
            terms = dreambooth_loss(
                prediction, target, is_prior, prior_weight=config.prior_weight, weights=weights
            )
            accelerator.backward(terms.total / config.grad_accum)
            step_loss += terms.total.item() / config.grad_accum
            step_instance += terms.instance.item() / config.grad_accum
            step_prior += (terms.prior.item() if terms.prior is not None else 0.0) / config.grad_accum
        grad_norm = (
            float(accelerator.clip_grad_norm_(params, config.max_grad_norm))
            if config.max_grad_norm
            else math.nan
        )
        lr = float(lr_scheduler.get_last_lr()[0])  # the rate this step used
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        loss_value = step_loss
        logger.scalars(
            step + 1,
            loss=step_loss,
            instance_loss=step_instance,
            prior_loss=step_prior if priors else None,
            lr=lr,
            grad_norm=grad_norm,
        )
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
        done = step + 1
        if config.sample_every and done % config.sample_every == 0 and done != config.steps:
            sample_files.append(
                save_samples(model, config, resolution, out / "samples" / f"step-{done:06d}.png", done)
            )
        if config.checkpoint_every and done % config.checkpoint_every == 0 and done != config.steps:
            method.save(
                model, out / "checkpoints" / f"step-{done:06d}", {**metadata, "boothkit_step": str(done)}
            )
    bar.close()

    model.unet.eval()
    weights_files = method.save(model, out, {**metadata, "boothkit_step": str(config.steps)})
    sample_files.append(
        save_samples(
            model, config, resolution, out / "samples" / f"step-{config.steps:06d}.png", config.steps
        )
    )
    logger.close()
    curve = logger.plot(out / "loss.png")
    seconds = time.time() - started
    result = TrainResult(out, weights_files, config.steps, seconds, loss_value, sample_files, warnings)
    summary = {
        "steps": config.steps,
        "seconds": round(seconds, 2),
        "final_loss": loss_value,
        "family": model.name,
        "prediction_type": model.prediction_type,
        "resolution": resolution,
        "instance_images": [str(p) for p in images],
        "class_images": len(prior_paths),
        "weights": [str(p) for p in weights_files],
        "samples": [str(p) for p in sample_files],
        "loss_curve": str(curve),
        "warnings": warnings,
    }
    atomic_write_json(out / "summary.json", summary)
    _write_marker(out, "complete", finished=datetime.now(timezone.utc).isoformat())
    return result


def make_optimizer(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    if config.adam_8bit:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise BoothkitError(
                "--adam-8bit needs bitsandbytes, which is not installed",
                hint="pip install bitsandbytes (CUDA only)",
            ) from None
        return bnb.optim.AdamW8bit(groups, weight_decay=config.weight_decay)  # type: ignore[no-any-return]
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def run_metadata(config: TrainConfig, model: Family, images: list[Path], resolution: int) -> dict[str, str]:
    """What every .safetensors boothkit writes says about itself (kohya `ss_*` keys where they exist)."""
    from boothkit import __version__

    alpha = config.lora_alpha if config.lora_alpha is not None else config.rank
    return {
        "boothkit_version": __version__,
        "boothkit_base_model": config.model,
        "boothkit_family": model.name,
        "boothkit_method": config.method,
        "boothkit_token": config.token,
        "boothkit_class_noun": config.class_noun or "",
        "boothkit_rank": str(config.rank),
        "boothkit_alpha": str(alpha),
        "boothkit_steps": str(config.steps),
        "boothkit_resolution": str(resolution),
        "boothkit_images_hash": images_hash(images),
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}[model.name],
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_max_train_steps": str(config.steps),
        "ss_learning_rate": str(config.lr),
    }


# ----------------------------------------------------------------------------- outputs


@torch.no_grad()
def sample_images(
    model: Family, prompts: list[str], seeds: list[int], resolution: int, steps: int
) -> list[list[Any]]:
    """Rows of images: one row per prompt, one column per seed, fixed generators."""
    pipe = model.pipeline()
    pipe.set_progress_bar_config(disable=True)
    rows = []
    half = model.unet.dtype != torch.float32  # frozen weights in bf16/fp16: the VAE stays fp32
    for prompt in prompts:
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        with torch.autocast(model.unet.device.type, dtype=model.unet.dtype, enabled=half):
            result = pipe(
                [prompt] * len(seeds),
                num_inference_steps=steps,
                height=resolution,
                width=resolution,
                generator=generators,
            )
        rows.append(list(result.images))
    return rows


def save_samples(model: Family, config: TrainConfig, resolution: int, path: Path, step: int) -> Path:
    from boothkit.data.captions import render_prompt
    from boothkit.grids import labelled_grid

    was_training = model.unet.training
    model.unet.eval()
    prompts = [
        render_prompt(p, token=config.token, class_noun=config.class_noun) for p in config.sample_prompts
    ]
    rows = sample_images(model, prompts, list(config.sample_seeds), resolution, config.sample_steps)
    grid = labelled_grid(
        rows, row_labels=prompts, col_labels=[f"seed {s}" for s in config.sample_seeds], title=f"step {step}"
    )
    model.unet.train(was_training)
    return atomic_save_image(grid, path)


class RunLogger:
    """Scalars to a JSONL file and TensorBoard; the loss curve at the end."""

    def __init__(self, out: Path) -> None:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self.path = out / "logs" / "train.jsonl"
        self.file = self.path.open("a", encoding="utf-8")
        self.history: list[dict[str, Any]] = []
        self.start = time.time()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb: Any = SummaryWriter(str(out / "logs" / "tensorboard"))
        except (
            ImportError
        ):  # pragma: no cover - tensorboard is a dependency, but keep logs working without it
            self.tb = None

    def scalars(self, step: int, **values: float | None) -> None:
        row = {"step": step, "time": round(time.time() - self.start, 3)}
        row.update({k: v for k, v in values.items() if v is not None})
        self.history.append(row)
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                if v is not None and math.isfinite(v):
                    self.tb.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()

    def plot(self, path: Path) -> Path:
        from boothkit.grids import line_plot

        series = {
            name: [(r["step"], r[name]) for r in self.history if name in r]
            for name in ("loss", "instance_loss", "prior_loss")
        }
        series = {k: v for k, v in series.items() if v}
        # A running mean makes the trend visible through the per-step noise of diffusion losses.
        if series.get("loss"):
            k = max(1, len(series["loss"]) // 20)
            vals = [v for _, v in series["loss"]]
            series["loss (mean)"] = [
                (
                    series["loss"][i][0],
                    sum(vals[max(0, i - k + 1) : i + 1]) / len(vals[max(0, i - k + 1) : i + 1]),
                )
                for i in range(len(vals))
            ]
        return atomic_save_image(line_plot(series, title="training loss", log_y=True), path)


def summary_text(result: TrainResult, config: TrainConfig) -> str:
    lines = [
        "",
        f"done: {result.steps} steps in {result.seconds:.1f} s, final loss {result.final_loss:.4f}",
        f"  weights : {', '.join(str(p) for p in result.weights)}",
        f"  samples : {result.output / 'samples'}",
        f"  loss    : {result.output / 'loss.png'}",
        f"  logs    : {result.output / 'logs'} (train.jsonl, tensorboard)",
        f"  config  : {result.output / 'config.toml'}",
        "generate with:",
        f'  boothkit generate --model {config.model} --lora {result.output} --prompt "a photo of {config.token} '
        f'{config.class_noun or ""} wearing a wizard hat" --seed 42',
    ]
    return "\n".join(lines)
