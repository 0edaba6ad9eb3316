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

from boothkit.checkpoint import LoopState, named_trainable
from boothkit.config import TrainConfig, to_toml
from boothkit.data.cache import CachedImage, encode_images, encode_prompt_set
from boothkit.data.order import batch_latents, bucket_sizes, take
from boothkit.errors import BoothkitError
from boothkit.families import Conditioning, Family, LoadOptions, load_model
from boothkit.guards import StopFlag, estimate_disk, is_oom, oom_message
from boothkit.io import atomic_write_json, atomic_write_text
from boothkit.losses import (
    LossTerms,
    compute_snr,
    dreambooth_loss,
    min_snr_weights,
    sample_noise,
    sample_timesteps,
    training_target,
)
from boothkit.methods import TrainingMethod, get_method
from boothkit.outputs import RunLogger, save_samples, summary_text

RUN_MARKER = "boothkit_run.json"
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TrainingInterrupted(BoothkitError):
    """Ctrl-C or SIGTERM: the step finished, a checkpoint was saved, the run can be resumed."""

    exit_code = 130


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


def _within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (symlinks resolved)."""
    path, folder = path.expanduser().resolve(), folder.expanduser().resolve()
    return path == folder or folder in path.parents


def check_folders(config: TrainConfig) -> None:
    """Refuse folder choices that would write into the user's photos or mix the two kinds of images:
    what is written under --images or --class-dir would be read as photos by the next run."""
    inputs = [("--images", Path(config.images))]
    if config.class_dir:
        class_dir = Path(config.class_dir)
        if _within(class_dir, inputs[0][1]) or _within(inputs[0][1], class_dir):
            raise BoothkitError(
                f"--class-dir {class_dir} and --images {config.images} overlap: class images must be other "
                f"{config.class_noun or 'members of the class'}, not your subject's photos",
                hint="put your class images in a folder of their own, or drop --class-dir to generate them",
            )
        inputs.append(("--class-dir", class_dir))
    written = [("--output", Path(config.output))]
    if config.bank_dir:
        written.append(("--bank-dir", Path(config.bank_dir)))
    for wflag, wpath in written:
        for iflag, ipath in inputs:
            if _within(wpath, ipath):
                raise BoothkitError(
                    f"{wflag} {wpath} is inside {iflag} {ipath}: boothkit never writes into your image "
                    "folders, and what it wrote there would be read as images by the next run",
                    hint=f"choose a {wflag} folder outside {ipath}",
                )


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


RARE_TOKENS = ("sks", "ohwx", "zwx", "qwx", "vvn", "xjy", "mkr", "phol", "txcl", "bnha")


def _common(tokenizer: Any, piece: str) -> bool:
    """A BPE id ranks a token by how early its merge was learned, i.e. how frequent the word is.

    Only meaningful for full-size vocabularies (CLIP's 49408); tiny test tokenizers are skipped.
    """
    vocab = len(tokenizer)
    if vocab < 10_000:
        return False
    token_id = tokenizer.convert_tokens_to_ids(piece)
    return 512 <= token_id < int(0.4 * vocab)  # ids below 512 are single bytes


def token_warnings(model: Family, token: str) -> list[str]:
    """A token that splits into pieces, or is a common word, binds the subject to other meanings."""

    def ok(candidate: str) -> bool:
        for tokenizer in model.tokenizers:
            pieces = tokenizer.tokenize(candidate)
            if len(pieces) != 1 or _common(tokenizer, pieces[0]):
                return False
        return True

    if ok(token):
        return []
    suggestions = [c for c in RARE_TOKENS if c != token and ok(c)][:3]
    hint = (
        f"rarer single-piece tokens: {', '.join(suggestions)}" if suggestions else "try a short nonsense word"
    )
    for tokenizer in model.tokenizers:
        pieces = tokenizer.tokenize(token)
        if len(pieces) != 1:
            return [
                f"token {token!r} is split by the tokenizer into {len(pieces)} pieces {pieces}, which binds "
                f"the subject to several tokens' meanings; {hint}"
            ]
    return [f"token {token!r} is a common word, so the subject will mix with its meaning; {hint}"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BoothkitError(f"--device {name}: no CUDA device is available", hint="use --device cpu")
    return device


def class_prompt_cycle(config: TrainConfig, token: str) -> list[str]:
    """The prompts generated class images use in turn: --class-prompts, else the one --class-prompt."""
    from boothkit.data.captions import render_prompt

    templates = config.class_prompts or (config.class_prompt,)
    return [render_prompt(t, token=token, class_noun=config.class_noun) for t in templates]


def prior_prompts(config: TrainConfig, token: str, prior_paths: list[Path]) -> list[str]:
    """The prompt each class image trains on.

    Your own class images may be captioned like instance photos (name.txt, metadata.jsonl), and
    generated ones keep the prompt they were made from, so the prior loss holds the class noun in
    the same contexts the instance captions name ("a photo of a dog on a beach").
    """
    if config.class_dir:
        from boothkit.data.captions import instance_prompts

        folder = Path(config.class_dir).expanduser()
        return instance_prompts(
            prior_paths, folder, template=config.class_prompt, token=token, class_noun=config.class_noun
        )
    from boothkit.prior import prompt_in_turn

    cycle = class_prompt_cycle(config, token)
    return [prompt_in_turn(cycle, i) for i in range(len(prior_paths))]


def class_images(config: TrainConfig, model: Family, resolution: int) -> list[Path]:
    """The prior-preservation images: the user's own folder, or the bank (generated as needed)."""
    if config.class_dir:
        from boothkit.data.images import check_folder

        report = check_folder(Path(config.class_dir).expanduser(), resolution=resolution)
        paths = report.usable()
        if report.rejected() and not config.skip_invalid:
            raise BoothkitError(
                f"some files in --class-dir {config.class_dir} can't be used:\n{report.format()}",
                hint="fix or remove the rejected files, or pass --skip-invalid to train on the rest",
            )
        if not paths:
            raise BoothkitError(f"--class-dir {config.class_dir} holds no usable images")
        return paths[: config.class_images] if config.class_images else paths
    from boothkit.prior import BankKey, ensure_class_images

    key = BankKey(
        model=model.source.fingerprint,
        prompt="\n".join(class_prompt_cycle(config, config.token)),
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


# ----------------------------------------------------------------------------- the loop


@dataclass
class Run:
    """Everything the loop needs, prepared once."""

    config: TrainConfig
    out: Path
    model: Family
    method: TrainingMethod
    device: torch.device
    weight_dtype: torch.dtype
    accelerator: Any
    instances: list[CachedImage]
    priors: dict[tuple[int, int], list[CachedImage]]  # by (width, height)
    embeddings: dict[str, Conditioning]
    params: list[torch.nn.Parameter]
    optimizer: Any
    lr_scheduler: Any
    resolution: int
    images: list[Path]
    prior_paths: list[Path]
    warnings: list[str]

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        names = ["unet", *self.model.text_encoder_lora_prefixes()]
        return dict(zip(names, [self.model.unet, *self.model.text_encoders], strict=True))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = {name: p.detach() for name, p in named_trainable(self.trainable_modules())}
        state.update({f"method.{k}": v for k, v in self.method.state().items()})
        return state


def prepare(config: TrainConfig, model: Family | None, log: Callable[[str], None], images: list[Path]) -> Run:
    """Check photos, load the model, make or reuse class images, cache latents, set up the method."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from boothkit.data.captions import instance_prompts
    from boothkit.data.images import parse_color

    out = Path(config.output).expanduser()
    device = resolve_device(config.device)
    if config.mixed_precision == "fp16" and device.type != "cuda":
        raise BoothkitError("--mixed-precision fp16 needs a CUDA device", hint="use bf16 or no on CPU")
    # accelerate keeps one global state per process; train() may run several times in one process.
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=device.type == "cpu")
    weight_dtype = DTYPES[config.mixed_precision]

    if model is None:
        options = LoadOptions(
            config.model_config,
            config.prediction_type,
            torch.float32,
            str(device),
            allow_pickle=config.allow_pickle,
        )
        model = load_model(config.model, options)
    warnings = token_warnings(model, config.token)
    for w in warnings:
        log(f"warning: {w}")
    resolution = config.resolution or model.default_resolution
    if resolution % (model.vae_scale_factor * 2):
        raise BoothkitError(
            f"--resolution {resolution} must be a multiple of {model.vae_scale_factor * 2} for this model"
        )

    # Prior images are made by the base model, before any adapter or token is added.
    prior_paths = class_images(config, model, resolution) if config.uses_prior else []

    # Frozen weights in the compute dtype; the method keeps its trainable weights in fp32.
    model.unet.to(dtype=weight_dtype)
    for encoder in model.text_encoders:
        encoder.to(dtype=weight_dtype)
    method: TrainingMethod = get_method(config.method)
    groups = method.setup(model, config)

    folder = Path(config.images).expanduser()
    token = method.prompt_token(config.token)
    prompts = instance_prompts(
        images, folder, template=config.instance_prompt, token=token, class_noun=config.class_noun
    )
    class_prompts = prior_prompts(config, token, prior_paths)
    bg = parse_color(config.alpha_background)
    sizes = (
        bucket_sizes(images, resolution, bg) if config.buckets else [(resolution, resolution)] * len(images)
    )
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
        sizes=sizes,
    )
    # Class images join instance batches, so each is cached at every size an instance batch can have.
    priors = (
        {
            size: encode_images(
                model,
                prior_paths,
                class_prompts,
                is_prior=True,
                resolution=resolution,
                flip=False,
                seed=config.seed,
                sizes=[size] * len(prior_paths),
            )
            for size in sorted(set(sizes))
        }
        if prior_paths
        else {}
    )
    embeddings = {} if method.trains_text_encoder else encode_prompt_set(model, [*prompts, *class_prompts])
    if config.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
        if method.trains_text_encoder:
            for encoder in model.text_encoders:
                encoder.gradient_checkpointing_enable()
    model.unet.train()
    from diffusers.optimization import get_scheduler

    optimizer = make_optimizer(groups, config)
    lr_scheduler = get_scheduler(
        config.lr_schedule, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
    )
    optimizer = accelerator.prepare_optimizer(optimizer)  # a grad scaler for fp16; nothing on CPU
    params = [p for g in groups for p in g["params"]]
    return Run(
        config,
        out,
        model,
        method,
        device,
        weight_dtype,
        accelerator,
        instances,
        priors,
        embeddings,
        params,
        optimizer,
        lr_scheduler,
        resolution,
        images,
        prior_paths,
        warnings,
    )


def instance_batch(run: Run, position: int, size: int) -> list[CachedImage]:
    """`size` instance images for stream `position`; with buckets, all from the first one's bucket
    (a batch is one tensor), still a pure function of the position so resume replays it exactly."""
    instances, seed = run.instances, run.config.seed
    if not run.config.buckets:
        return [instances[i] for i in take(len(instances), seed, position, size)]
    anchor = instances[take(len(instances), seed, position, 1)[0]]
    members = [im for im in instances if im.size == anchor.size]
    return [anchor] + [members[i] for i in take(len(members), seed + 7, position, size - 1)]


def micro_step(run: Run, batch: list[CachedImage], generator: torch.Generator, accum: int) -> LossTerms:
    """Forward and backward for one micro-batch; gradients accumulate in the trainable parameters."""
    model, config, device = run.model, run.config, run.device
    latents, time_ids = batch_latents(batch, model, generator, config.flip)  # (N, C, h, w), (N, k)
    latents = latents.to(device)
    noise = sample_noise(latents, generator, offset=config.noise_offset)
    timesteps = sample_timesteps(len(batch), model.noise_scheduler.config.num_train_timesteps, generator).to(
        device
    )
    noisy = model.noise_scheduler.add_noise(latents, noise, timesteps)
    target = training_target(model.noise_scheduler, latents, noise, timesteps)
    texts = [item.prompt for item in batch]
    is_prior = torch.tensor([item.is_prior for item in batch], device=device)
    with run.accelerator.autocast():
        cond = (
            model.encode_prompts(texts)
            if run.method.trains_text_encoder
            else Conditioning.cat([run.embeddings[t] for t in texts]).to(device, run.weight_dtype)
        )
        prediction = model.predict(noisy.to(run.weight_dtype), timesteps, cond, time_ids)
    weights = None
    if config.snr_gamma:
        snr = compute_snr(model.noise_scheduler.alphas_cumprod, timesteps)
        weights = min_snr_weights(snr, config.snr_gamma, model.prediction_type)
    terms = dreambooth_loss(prediction, target, is_prior, prior_weight=config.prior_weight, weights=weights)
    run.accelerator.backward(terms.total / accum)
    return terms


def _manifest(run: Run) -> dict[str, Any]:
    import dataclasses as dc

    return {
        "config": {k: v for k, v in dc.asdict(run.config).items()},
        "images_hash": images_hash(run.images),
        "class_images_hash": images_hash(run.prior_paths) if run.prior_paths else "",
        "model_fingerprint": run.model.source.fingerprint,
    }


def _resume_point(config: TrainConfig, out: Path) -> Path | None:
    """The checkpoint to resume from, or None for a fresh run; never silently starts over."""
    if config.resume is None:
        return None
    run_dir = out if config.resume == "latest" else Path(config.resume).expanduser()
    if run_dir.resolve() != out.resolve():
        raise BoothkitError(
            f"--resume {run_dir} differs from --output {out}", hint="resume writes into the run it continues"
        )
    from boothkit.checkpoint import latest_checkpoint, remove_partials

    remove_partials(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise BoothkitError(
            f"--resume {run_dir}: no complete checkpoint to resume from; nothing was changed",
            hint="checkpoints are written every --checkpoint-every steps and on Ctrl-C",
        )
    return ckpt


def _restore(run: Run, ckpt_path: Path, generator: torch.Generator) -> LoopState:
    from boothkit.checkpoint import config_differences, load_checkpoint, restore_rng

    ckpt = load_checkpoint(ckpt_path)
    current = _manifest(run)
    problems = config_differences(ckpt.manifest.get("config", {}), current["config"])
    if ckpt.manifest.get("images_hash") != current["images_hash"]:
        problems.append("the instance images changed")
    if ckpt.manifest.get("class_images_hash") != current["class_images_hash"]:
        problems.append("the class images changed")
    if ckpt.manifest.get("model_fingerprint") != current["model_fingerprint"]:
        problems.append("the base model changed")
    if problems and not run.config.force_resume:
        raise BoothkitError(
            f"refusing to resume from {ckpt_path}: " + "; ".join(problems),
            hint="resume with the same settings and images, or pass --force-resume to continue anyway",
        )
    params = dict(named_trainable(run.trainable_modules()))
    method_state = {
        k.removeprefix("method."): v for k, v in ckpt.trainable.items() if k.startswith("method.")
    }
    missing = set(params) ^ {k for k in ckpt.trainable if not k.startswith("method.")}
    if missing:
        raise BoothkitError(
            f"checkpoint {ckpt_path} does not fit this run's trainable weights "
            f"({len(missing)} names differ, e.g. {sorted(missing)[0]})"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(ckpt.trainable[name].to(p.device, p.dtype))
    run.method.load_state(method_state)
    run.optimizer.load_state_dict(ckpt.optimizer)
    run.lr_scheduler.load_state_dict(ckpt.lr_scheduler)
    if ckpt.scaler is not None and run.accelerator.scaler is not None:
        run.accelerator.scaler.load_state_dict(ckpt.scaler)
    restore_rng(generator, ckpt.rng_tensors, ckpt.rng_plain)
    return ckpt.loop


def train(
    config: TrainConfig,
    *,
    model: Family | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Run DreamBooth training as configured. `model` may be passed pre-loaded (it is trained in place)."""
    from tqdm.auto import tqdm

    from boothkit.checkpoint import fault_point, save_checkpoint
    from boothkit.data.captions import check_captions_omit_token, check_prompts_name_token
    from boothkit.methods.textual_inversion import placeholder_tokens

    started = time.time()
    out = Path(config.output).expanduser()
    check_folders(config)
    resume_from = _resume_point(config, out)
    images = check_instance_images(config)  # before the model loads: bad photos fail in seconds
    check_prompts_name_token(
        images,
        Path(config.images).expanduser(),
        template=config.instance_prompt,
        # TI and pivotal prompts use the new placeholder ("<sks>"), never the word itself.
        token=config.token if config.method in ("lora", "full") else placeholder_tokens(config.token, 1)[0],
    )
    if config.uses_prior and config.class_dir:
        check_captions_omit_token(Path(config.class_dir).expanduser(), config.token)
    if resume_from is None:
        prepare_output(out)
    run = prepare(config, model, log, images)
    model = run.model
    estimate_disk(run)
    _write_marker(out, "running", started=datetime.now(timezone.utc).isoformat())
    atomic_write_text(out / "config.toml", to_toml(config))

    generator = torch.Generator().manual_seed(config.seed)
    loop = LoopState(step=0, batch_size=config.batch_size, grad_accum=config.grad_accum)
    if resume_from is not None:
        loop = _restore(run, resume_from, generator)
        log(f"resuming from {resume_from} (step {loop.step} of {config.steps})")
    logger = RunLogger(out, truncate_after=loop.step)
    metadata = run_metadata(config, model, run.images, run.resolution)
    sample_files: list[Path] = []
    loss_value = math.nan
    consecutive_bad = 0

    def checkpoint() -> Path:
        return save_checkpoint(
            out,
            loop,
            trainable=run.trainable_state(),
            optimizer=run.optimizer,
            lr_scheduler=run.lr_scheduler,
            scaler=run.accelerator.scaler,
            generator=generator,
            manifest=_manifest(run),
            keep=config.keep_checkpoints,
        )

    bar = tqdm(
        total=config.steps,
        initial=loop.step,
        desc="training",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    with StopFlag() as stop:
        while loop.step < config.steps:
            step_start_rng = generator.get_state()
            try:
                terms = []
                for micro in range(loop.grad_accum):
                    B = loop.batch_size
                    position = (loop.step * loop.grad_accum + micro) * B
                    batch = instance_batch(run, position, B)
                    if run.priors:
                        priors = run.priors[batch[0].size]
                        batch += [priors[i] for i in take(len(priors), config.seed + 1, position, B)]
                    terms.append(micro_step(run, batch, generator, loop.grad_accum))
                    if micro == 0 and loop.grad_accum > 1:
                        fault_point("micro", loop.step + 1)
            except Exception as e:
                if not is_oom(e):
                    raise
                run.optimizer.zero_grad(set_to_none=True)
                if not (config.auto_batch_size and loop.batch_size > 1):
                    raise oom_message(run, loop) from None
                # Same effective batch, same data order: halve the batch, double the accumulation.
                loop.batch_size //= 2
                loop.grad_accum *= 2
                generator.set_state(step_start_rng)
                log(
                    f"out of memory: retrying with --batch-size {loop.batch_size} --grad-accum {loop.grad_accum}"
                )
                continue

            step_loss = sum(t.total.item() for t in terms) / len(terms)
            grads_finite = all(bool(torch.isfinite(p.grad).all()) for p in run.params if p.grad is not None)
            finite = math.isfinite(step_loss) and grads_finite
            grad_norm = math.nan
            if finite and config.max_grad_norm:
                grad_norm = float(run.accelerator.clip_grad_norm_(run.params, config.max_grad_norm))
            lr = float(run.lr_scheduler.get_last_lr()[0])  # the rate this step used
            if finite:
                run.method.before_update(model, loop.step)
                run.optimizer.step()
                run.lr_scheduler.step()
                run.method.after_update(model, loop.step)
                consecutive_bad = 0
            else:
                # A non-finite loss or gradient: skip the update, weights untouched.
                loop.skipped_steps += 1
                consecutive_bad += 1
            run.optimizer.zero_grad(set_to_none=True)
            loop.step += 1
            bar.update(1)

            if finite:
                loss_value = step_loss
                instance = sum(t.instance.item() for t in terms) / len(terms)
                prior = (
                    sum(t.prior.item() for t in terms if t.prior is not None) / len(terms)
                    if run.priors
                    else None
                )
                logger.scalars(
                    loop.step,
                    loss=step_loss,
                    instance_loss=instance,
                    prior_loss=prior,
                    lr=lr,
                    grad_norm=grad_norm,
                )
                bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
            else:
                logger.scalars(loop.step, skipped=1.0, skipped_total=float(loop.skipped_steps))
                log(
                    f"warning: step {loop.step}: non-finite loss or gradient, update skipped "
                    f"({loop.skipped_steps} skipped so far)"
                )
                if consecutive_bad >= config.max_nan_steps:
                    bar.close()
                    logger.close()
                    _write_marker(out, "failed", reason="non-finite loss")
                    from boothkit.checkpoint import latest_checkpoint

                    last = latest_checkpoint(out)
                    raise BoothkitError(
                        f"{consecutive_bad} consecutive steps had a non-finite loss or gradient (step {loop.step}); "
                        f"stopped. Last good checkpoint: {last or 'none'}",
                        hint="likely causes: fp16 overflow (try --mixed-precision bf16), a learning rate too "
                        f"high (--lr {config.lr}: try {config.lr / 10:g}), or the SDXL VAE in fp16",
                    )

            done = loop.step
            if config.sample_every and done % config.sample_every == 0 and done != config.steps:
                sample_files.append(
                    save_samples(
                        model,
                        config,
                        run.resolution,
                        out / "samples" / f"step-{done:06d}.png",
                        done,
                        run.method.prompt_token(config.token),
                    )
                )
            periodic = config.checkpoint_every and done % config.checkpoint_every == 0 and not consecutive_bad
            if periodic or stop.signal is not None:
                path = checkpoint()
                if stop.signal is not None:
                    bar.close()
                    logger.close()
                    _write_marker(out, "interrupted", step=done)
                    raise TrainingInterrupted(
                        f"stopped at step {done} of {config.steps}; checkpoint saved in {path}",
                        hint=f"continue with: boothkit train --resume {out}",
                    )
    bar.close()

    model.unet.eval()
    weights_files = run.method.save(model, out, {**metadata, "boothkit_step": str(config.steps)})
    sample_files.append(
        save_samples(
            model,
            config,
            run.resolution,
            out / "samples" / f"step-{config.steps:06d}.png",
            config.steps,
            run.method.prompt_token(config.token),
        )
    )
    logger.close()
    curve = logger.plot(out / "loss.png")
    seconds = time.time() - started
    result = TrainResult(out, weights_files, config.steps, seconds, loss_value, sample_files, run.warnings)
    summary = {
        "steps": config.steps,
        "seconds": round(seconds, 2),
        "final_loss": loss_value,
        "skipped_steps": loop.skipped_steps,
        "family": model.name,
        "prediction_type": model.prediction_type,
        "resolution": run.resolution,
        "instance_images": [str(p) for p in run.images],
        "class_images": len(run.prior_paths),
        "weights": [str(p) for p in weights_files],
        "samples": [str(p) for p in sample_files],
        "loss_curve": str(curve),
        "warnings": run.warnings,
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
    """What every .safetensors boothkit writes says about itself (kohya `ss_*` and `modelspec.*` keys)."""
    from boothkit.export import lora_metadata

    meta = lora_metadata(
        base_model=config.model,
        family=model.name,
        rank=config.rank,
        alpha=config.lora_alpha if config.lora_alpha is not None else config.rank,
        steps=config.steps,
        resolution=resolution,
        method=config.method,
        token=config.token,
        class_noun=config.class_noun or "",
        images_hash=images_hash(images),
        prediction_type=model.prediction_type,
        output_name=Path(config.output).name,
        learning_rate=config.lr,
    )
    if config.method in ("full", "ti"):  # no network: drop the LoRA-only keys
        meta = {
            k: v
            for k, v in meta.items()
            if not k.startswith("ss_network") and k not in ("boothkit_rank", "boothkit_alpha")
        }
        arch = meta["modelspec.architecture"].removesuffix("/lora")
        meta["modelspec.architecture"] = arch + ("/textual-inversion" if config.method == "ti" else "")
    return meta


__all__ = ["TrainResult", "TrainingInterrupted", "prepare", "summary_text", "train"]
