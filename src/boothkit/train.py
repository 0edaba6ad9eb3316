"""The DreamBooth training loop, top to bottom: prepare, micro-step, loop, restore, save.

Inside a step there are three kinds of calls: the family encodes and predicts, `losses` computes,
the method decides what trains and what is saved. Before the loop, `preflight` checks everything
that needs no model, then `prepare` loads the model, makes or reuses class images and caches
latents and prompt embeddings; after it, `save` writes the weights, samples, loss curve and summary.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from boothkit.checkpoint import (
    LoopState,
    fault_point,
    latest_checkpoint,
    load_checkpoint,
    named_trainable,
    remove_partials,
    restore_rng,
    resume_problems,
    save_checkpoint,
)
from boothkit.config import TrainConfig
from boothkit.data.cache import CachedImage, encode_images, encode_prompt_set
from boothkit.data.captions import instance_prompts
from boothkit.data.images import images_hash, parse_color
from boothkit.data.order import batch_latents, bucket_sizes, take
from boothkit.errors import BoothkitError, TrainingInterrupted, WriteError
from boothkit.families import FAMILY_NAMES, Conditioning, Family, LoadOptions, load_model, prompt_fit
from boothkit.files import LOSS_PLOT, SAMPLES_DIR, step_name
from boothkit.guards import StopFlag, estimate_disk, is_oom, oom_message
from boothkit.losses import (
    LossTerms,
    dreambooth_loss,
)
from boothkit.metadata import run_metadata
from boothkit.methods import TrainingMethod, get_method
from boothkit.outputs import RunLogger, encode_sample_prompts, save_samples, write_summary
from boothkit.preflight import Preflight, preflight, refuse_changed_run, resolve_device, token_warnings
from boothkit.prior import class_images, prior_prompts
from boothkit.quantize import quantize_linear_layers
from boothkit.run import Run, RunFolder, TrainResult, open_run
from boothkit.templates import render_prompt

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ----------------------------------------------------------------------------- prepare


def prepare(
    config: TrainConfig,
    model: Family | None,
    log: Callable[[str], None],
    images: list[Path],
    *,
    progress: bool = True,
) -> Run:
    """Load the model, make or reuse class images, cache latents and prompts, set up the method."""
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
    objective = model.objective(config)  # refuses settings that do not apply to this family
    method: TrainingMethod = get_method(config.method)
    if method.learns_tokens and not model.learns_tokens:
        raise BoothkitError(
            f"--method {config.method} is not available for {FAMILY_NAMES[model.name]} yet: boothkit cannot "
            "learn a new token for its text encoders",
            hint="use --method lora (the default) or --method full",
        )
    warnings = token_warnings(model, config.token)
    for w in warnings:
        log(f"warning: {w}")
    resolution = config.resolution or model.default_resolution
    multiple = model.vae_scale_factor * 2  # Flux packs 2x2 latents; SD's UNets halve them at least once
    if resolution % multiple:
        raise BoothkitError(
            f"--resolution {resolution} must be a multiple of {multiple} for this model",
            hint=f"try --resolution {max(multiple, round(resolution / multiple) * multiple)}",
        )

    # Prior images are made by the base model, before any adapter or token is added.
    started = time.time()
    prior = class_images(config, model, resolution, progress=progress, log=log) if config.uses_prior else None
    prior_paths = prior.paths if prior else []
    class_image_seconds = time.time() - started
    for skipped in prior.skipped if prior else []:
        log(f"skipped (--skip-invalid): {skipped}")

    # Frozen weights in the compute dtype; the method keeps its trainable weights in fp32.
    model.denoiser.to(dtype=weight_dtype)
    for encoder in model.text_encoders:
        encoder.to(dtype=weight_dtype)
    if config.quantize_base is not None:
        quantized = quantize_linear_layers(model.denoiser, config.quantize_base)
        log(f"{model.denoiser_name} stored as {config.quantize_base}: {quantized}")
    groups = method.setup(model, config)

    token = method.prompt_token(config.token)
    prompts = instance_prompts(
        images,
        Path(config.images).expanduser(),
        template=config.instance_prompt,
        token=token,
        class_noun=config.class_noun,
    )
    class_prompts = prior_prompts(config, token, prior_paths)
    samples = [render_prompt(p, token=token, class_noun=config.class_noun) for p in config.sample_prompts]
    for prompt in dict.fromkeys([*prompts, *class_prompts, *samples]):
        note = prompt_fit(model.tokenizers, prompt, token.split())  # refuses a cut-off identifier
        if note:
            log(f"warning: {note}")
            warnings.append(note)
    bg = parse_color(config.alpha_background)
    sizes = (
        bucket_sizes(images, resolution, bg, multiple=multiple)
        if config.buckets
        else [(resolution, resolution)] * len(images)
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
    priors = {
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
        if prior_paths
    }
    embeddings: dict[str, Conditioning] = {}
    encoded_samples: dict[str, dict[str, Any]] = {}
    if not method.trains_text_encoder:
        embeddings = encode_prompt_set(model, [*prompts, *class_prompts])
        encoded_samples = encode_sample_prompts(model, samples)
        # No prompt is encoded again: the text encoders (T5-XXL alone is ~9 GB) leave the accelerator.
        for encoder in model.text_encoders:
            encoder.to("cpu")
    if config.gradient_checkpointing:
        model.denoiser.enable_gradient_checkpointing()
        if method.trains_text_encoder:
            for encoder in model.text_encoders:
                encoder.gradient_checkpointing_enable()
    model.denoiser.train()

    optimizer = make_optimizer(groups, config)
    lr_scheduler = get_scheduler(
        config.lr_schedule, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
    )
    return Run(
        config=config,
        out=out,
        model=model,
        objective=objective,
        method=method,
        device=device,
        weight_dtype=weight_dtype,
        accelerator=accelerator,
        instances=instances,
        priors=priors,
        embeddings=embeddings,
        params=[p for g in groups for p in g["params"]],
        optimizer=accelerator.prepare_optimizer(optimizer),  # a grad scaler for fp16; nothing on CPU
        lr_scheduler=lr_scheduler,
        resolution=resolution,
        images=images,
        prior_paths=prior_paths,
        warnings=warnings,
        class_image_seconds=class_image_seconds,
        skipped=list(prior.skipped) if prior else [],
        encoded_samples=encoded_samples,
    )


def make_optimizer(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    if config.adam_8bit:
        try:
            import bitsandbytes as bnb  # optional, CUDA only
        except ImportError:
            raise BoothkitError(
                "--adam-8bit needs bitsandbytes, which is not installed",
                hint="pip install bitsandbytes (CUDA only)",
            ) from None
        return bnb.optim.AdamW8bit(groups, weight_decay=config.weight_decay)  # type: ignore[no-any-return]
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


# ----------------------------------------------------------------------------- one micro-step


def instance_batch(run: Run, position: int, size: int) -> list[CachedImage]:
    """`size` instance images for stream `position`; with buckets, all from the first one's bucket
    (a batch is one tensor), still a pure function of the position so resume replays it exactly."""
    instances, seed = run.instances, run.config.seed
    if not run.config.buckets:
        return [instances[i] for i in take(len(instances), seed, position, size)]
    anchor = instances[take(len(instances), seed, position, 1)[0]]
    members = [im for im in instances if im.size == anchor.size]
    return [anchor] + [members[i] for i in take(len(members), seed + 7, position, size - 1)]


def micro_batch(run: Run, position: int, size: int) -> list[CachedImage]:
    """The instance images of stream `position`, and as many class images beside them."""
    batch = instance_batch(run, position, size)
    if run.priors:
        priors = run.priors[batch[0].size]
        batch += [priors[i] for i in take(len(priors), run.config.seed + 1, position, size)]
    return batch


def micro_step(run: Run, batch: list[CachedImage], generator: torch.Generator, accum: int) -> LossTerms:
    """Forward and backward for one micro-batch; gradients accumulate in the trainable parameters."""
    model, config, device = run.model, run.config, run.device
    latents, time_ids = batch_latents(batch, model, generator, config.flip)  # (N, C, h, w), (N, k)
    noised = run.objective.noised(latents.to(device), generator)
    texts = [item.prompt for item in batch]
    is_prior = torch.tensor([item.is_prior for item in batch], device=device)
    with run.accelerator.autocast():
        cond = (
            model.encode_prompts(texts)
            if run.method.trains_text_encoder
            else Conditioning.cat([run.embeddings[t] for t in texts]).to(device, run.weight_dtype)
        )
        prediction = model.predict(noised.noisy.to(run.weight_dtype), noised.timesteps, cond, time_ids)
    terms = dreambooth_loss(
        prediction, noised.target, is_prior, prior_weight=config.prior_weight, weights=noised.weights
    )
    run.accelerator.backward(terms.total / accum)
    return terms


# ----------------------------------------------------------------------------- restore


def manifest(run: Run) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the settings, the images and the base model."""
    return {
        "config": dataclasses.asdict(run.config),
        "images_hash": images_hash(run.images),
        "class_images_hash": images_hash(run.prior_paths) if run.prior_paths else "",
        "model_fingerprint": run.model.source.fingerprint,
    }


def restore(run: Run, ckpt_path: Path, generator: torch.Generator) -> LoopState:
    """Put a checkpoint's weights, optimizer, schedules and RNG back; refuse one of another run."""
    ckpt = load_checkpoint(ckpt_path)
    refuse_changed_run(ckpt_path, resume_problems(ckpt.manifest, manifest(run)), run.config)
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
    forged = [
        name
        for name, p in params.items()
        if ckpt.trainable[name].shape != p.shape or not ckpt.trainable[name].is_floating_point()
    ]
    if forged:
        raise BoothkitError(
            f"checkpoint {ckpt_path} does not fit this run's trainable weights ({len(forged)} tensors have "
            f"another shape or type, e.g. {forged[0]}: {tuple(ckpt.trainable[forged[0]].shape)} for "
            f"{tuple(params[forged[0]].shape)})",
            hint="resume a run with the checkpoint boothkit wrote for it",
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(ckpt.trainable[name].to(p.device, p.dtype))
    try:  # a checkpoint edited by hand (or by someone else) fails here by name, not deep in torch
        run.method.load_state(method_state)
        run.optimizer.load_state_dict(ckpt.optimizer)
        run.lr_scheduler.load_state_dict(ckpt.lr_scheduler)
        if ckpt.scaler is not None and run.accelerator.scaler is not None:
            run.accelerator.scaler.load_state_dict(ckpt.scaler)
        restore_rng(generator, ckpt.rng_tensors, ckpt.rng_plain)
    except (ValueError, RuntimeError, KeyError, TypeError, IndexError) as e:
        raise BoothkitError(
            f"checkpoint {ckpt_path} does not fit this run ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
            hint="resume a run with the checkpoint boothkit wrote for it",
        ) from None
    return ckpt.loop


# ----------------------------------------------------------------------------- the loop


def train(
    config: TrainConfig,
    *,
    model: Family | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Run DreamBooth training as configured. `model` may be passed pre-loaded (it is trained in place)."""
    started = time.time()
    out = Path(config.output).expanduser()
    # Everything that needs no model is checked before it loads: bad input fails in seconds.
    checks = preflight(config, get_method(config.method))
    for note in checks.notes:
        log(f"warning: {note}")
    for skipped in checks.skipped:
        log(f"skipped (--skip-invalid): {skipped}")
    with open_run(out, resume=checks.resume_from is not None) as folder:
        return _train(config, model, folder, checks, started, progress, log)


def _train(
    config: TrainConfig,
    model: Family | None,
    folder: RunFolder,
    checks: Preflight,
    started: float,
    progress: bool,
    log: Callable[[str], None],
) -> TrainResult:
    """The run in a locked run folder: prepare, restore, then the loop; its marker changes only once
    the work starts, so a run refused before then leaves the folder as it was."""
    out = folder.path
    run = prepare(config, model, log, checks.images, progress=progress)
    run.skipped[:0] = checks.skipped  # the photos first, then your own class images
    model = run.model
    estimate_disk(run)
    generator = torch.Generator().manual_seed(config.seed)
    loop = LoopState(step=0, batch_size=config.batch_size, grad_accum=config.grad_accum)
    if checks.resume_from is not None:
        loop = restore(run, checks.resume_from, generator)
        remove_partials(out)  # checkpoint writes a killed process left unfinished
        log(f"resuming from {checks.resume_from} (step {loop.step} of {config.steps})")
    folder.start(config)

    first_step = loop.step
    logger = RunLogger(out, truncate_after=loop.step)
    sample_files: list[Path] = []
    consecutive_bad = 0
    updates = 0  # optimizer steps this process took (a run whose every step was skipped failed)
    ending: dict[str, Any] | None = None  # the marker a stopped run leaves (interrupted, failed)

    def checkpoint() -> Path:
        return save_checkpoint(
            out,
            loop,
            trainable=run.trainable_state(),
            optimizer=run.optimizer,
            lr_scheduler=run.lr_scheduler,
            scaler=run.accelerator.scaler,
            generator=generator,
            manifest=manifest(run),
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
    try:
        with StopFlag() as stop:
            while loop.step < config.steps:
                step_start_rng = generator.get_state()
                try:
                    terms = []
                    for micro in range(loop.grad_accum):
                        position = (loop.step * loop.grad_accum + micro) * loop.batch_size
                        batch = micro_batch(run, position, loop.batch_size)
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
                grads_finite = all(
                    bool(torch.isfinite(p.grad).all()) for p in run.params if p.grad is not None
                )
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
                    updates += 1
                else:
                    # A non-finite loss or gradient: skip the update, weights untouched.
                    loop.skipped_steps += 1
                    consecutive_bad += 1
                run.optimizer.zero_grad(set_to_none=True)
                loop.step += 1
                bar.update(1)

                if finite:
                    prior = (
                        sum(t.prior.item() for t in terms if t.prior is not None) / len(terms)
                        if run.priors
                        else None
                    )
                    logger.scalars(
                        loop.step,
                        loss=step_loss,
                        instance_loss=sum(t.instance.item() for t in terms) / len(terms),
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
                        ending = {"status": "failed", "reason": "non-finite loss"}
                        raise BoothkitError(
                            f"{consecutive_bad} consecutive steps had a non-finite loss or gradient (step {loop.step}); "
                            f"stopped. Last good checkpoint: {latest_checkpoint(out) or 'none'}",
                            hint="likely causes: fp16 overflow (try --mixed-precision bf16), a learning rate too "
                            f"high (--lr {config.lr}: try {config.lr / 10:g}), or the SDXL VAE in fp16",
                        )

                done = loop.step
                if config.sample_every and done % config.sample_every == 0 and done != config.steps:
                    sample_files.append(sample_grid(run, done))
                periodic = (
                    config.checkpoint_every and done % config.checkpoint_every == 0 and not consecutive_bad
                )
                if periodic or stop.signal is not None:
                    path = checkpoint()
                    if stop.signal is not None:
                        ending = {"status": "interrupted", "step": done}
                        raise TrainingInterrupted(
                            f"stopped at step {done} of {config.steps}; checkpoint saved in {path}",
                            hint=f"continue with: boothkit train --resume {out}",
                        )
        if not updates and loop.step > first_step:
            ending = {"status": "failed", "reason": "every step was skipped"}
            raise BoothkitError(
                f"every one of the {loop.step - first_step} steps had a non-finite loss or gradient, so "
                "nothing was learned and no weights were written",
                hint=f"check the settings for extreme values (--lr {config.lr}: try {config.lr / 10:g}), "
                "or try --mixed-precision no",
            )
        return save(run, logger, sample_files, loop.skipped_steps, started, folder)
    except BaseException as e:
        if ending is None:
            # A write the disk refused stopped the run, and it can go on from its last checkpoint.
            stopped = isinstance(e, KeyboardInterrupt | WriteError)
            ending = {"status": "interrupted" if stopped else "failed", "reason": _reason(e)}
        if isinstance(e, WriteError) and "--resume" not in (e.hint or ""):
            last = latest_checkpoint(out)
            raise WriteError(
                e.message + (f"; the run can continue from {last}" if last else ""),
                hint=(e.hint or "") + (f", then: boothkit train --resume {out}" if last else ""),
            ) from None
        raise
    finally:
        # However the loop ends (finished, stopped, failed), the bar and the log are closed, and a run
        # that stopped says why in its marker; resume accepts any run that is not complete.
        bar.close()
        logger.close()
        for encoder in model.text_encoders:  # back where they were loaded, for whoever passed the model
            encoder.to(run.device)
        if ending is not None:
            folder.stop(ending.pop("status"), **ending)


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {getattr(error, 'message', None) or error}".splitlines()[0][:300]


# ----------------------------------------------------------------------------- save


def sample_grid(run: Run, step: int) -> Path:
    """The validation grid at ``step`` (fixed prompts and seeds), in the run's samples folder."""
    path = run.out / SAMPLES_DIR / f"{step_name(step)}.png"
    token = run.method.prompt_token(run.config.token)
    return save_samples(run.model, run.config, run.resolution, path, step, token, run.encoded_samples)


def save(
    run: Run,
    logger: RunLogger,
    sample_files: list[Path],
    skipped_steps: int,
    started: float,
    folder: RunFolder,
) -> TrainResult:
    """The method's weights, the last samples, the loss curve, summary.json; then the run is complete."""
    config, model = run.config, run.model
    model.denoiser.eval()
    common = run_metadata(
        config,
        family=model.name,
        prediction_type=model.prediction_type,
        images_hash=images_hash(run.images),
        resolution=run.resolution,
    )
    metadata = {**run.method.file_metadata(common), "boothkit_step": str(config.steps)}
    weights = run.method.save(model, run.out, metadata)
    sample_files = [*sample_files, sample_grid(run, config.steps)]
    curve = logger.plot(run.out / LOSS_PLOT)
    final_loss, window = logger.final_loss()
    result = TrainResult(
        output=run.out,
        weights=weights,
        steps=config.steps,
        seconds=time.time() - started,
        final_loss=final_loss,
        samples=sample_files,
        warnings=run.warnings,
        class_image_seconds=run.class_image_seconds,
        loss_window=window,
    )
    write_summary(run, result, skipped_steps, curve)
    folder.finish()
    return result


__all__ = ["TrainResult", "TrainingInterrupted", "prepare", "train"]
