"""The run configuration: one frozen dataclass, loaded from TOML, overridden by flags, validated.

The dataclass is the schema: each field is a flag (`rank` -> `--rank`, `class_noun` -> `--class-noun`),
a TOML key, and a line of the resolved `config.toml` every run writes beside its outputs. No torch
import here, so `boothkit --help` and config errors are instant.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from boothkit.errors import BoothkitError
from boothkit.flags import check_numbers, option
from boothkit.templates import names_token

Method = Literal["lora", "full", "ti", "pivotal"]
# How rectified-flow training draws its sigmas, and weighs the loss per sigma (boothkit.objectives).
TimestepSampling = Literal["uniform", "logit_normal", "mode"]
LossWeighting = Literal["none", "sigma_sqrt", "cosmap"]
METHODS: tuple[str, ...] = get_args(Method)
Precision = Literal["no", "fp16", "bf16"]
QuantizeBase = Literal["int8", "fp8", "nf4"]  # what boothkit.quantize stores the base's weights as
LRSchedule = Literal[
    "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"
]

# A CLIP text encoder layer's LoRA targets: attention (diffusers' default) and MLP (kohya adds it).
TEXT_ENCODER_ATTENTION: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
TEXT_ENCODER_MLP: tuple[str, ...] = ("fc1", "fc2")
DEFAULT_VALIDATION_PROMPTS: tuple[str, ...] = (
    "a photo of {token} {class_noun}",
    "a photo of {token} {class_noun} in the snow",
    "a painting of {token} {class_noun} in the style of van gogh",
    "a photo of {class_noun}",
)


# The sections of `boothkit train --help`, in order; each field names its own.
SECTIONS: dict[str, str] = {
    "data": "subject, prompts and photos",
    "prior": "prior preservation (class images)",
    "method": "method: LoRA, full fine-tune, textual inversion, pivotal tuning",
    "optimisation": "optimisation",
    "precision": "precision, memory and device",
    "outputs": "samples and checkpoints",
    "resume": "resume and safety",
}
REQUIRED: tuple[str, ...] = ("model", "images", "output")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes a training run. Field docs are the CLI help."""

    # What to train on and where to write
    model: str = option("base model: hub id, local diffusers folder, or single-file .safetensors", default="")
    images: str = option("folder of instance photos of the subject", default="")
    output: str = option(
        "run folder to write (created; an existing non-empty folder must be a boothkit run)", default=""
    )
    token: str = option("identifier token bound to the subject", section="data", default="sks")
    class_noun: str | None = option(
        "class of the subject, e.g. dog (needed for prior preservation)", section="data", default=None
    )
    method: Method = option("training method", section="method", default="lora")
    instance_prompt: str = option(
        "prompt template for instance images", section="data", default="a photo of {token} {class_noun}"
    )
    class_prompt: str = option(
        "prompt for class (prior) images", section="prior", default="a photo of {class_noun}"
    )
    class_prompts: tuple[str, ...] = option(
        "several prompts for class images, used in turn (e.g. the contexts your captions name: "
        "'a photo of {class_noun} on a beach'); each class image trains on its own prompt",
        section="prior",
        default=(),
    )
    model_config: str | None = option(
        "for a single-file checkpoint: diffusers folder or hub id holding the matching configs",
        section="data",
        default=None,
    )
    prediction_type: Literal["epsilon", "v_prediction"] | None = option(
        "override the prediction type read from the model's scheduler config", section="data", default=None
    )
    # Images
    resolution: int | None = option(
        "training resolution (default: the model's native size)", section="data", default=None
    )
    flip: bool = option("random horizontal flip of instance images", section="data", default=False)
    crop: Literal["center", "random"] = option(
        "how non-square photos are cropped", section="data", default="center"
    )
    buckets: bool = option(
        "aspect-ratio bucketing: train each photo near its own shape at about the same pixel count",
        section="data",
        default=False,
    )
    alpha_background: str = option(
        "colour transparent areas are composited onto", section="data", default="white"
    )
    skip_invalid: bool = option(
        "train on the valid images when some are rejected", section="data", default=False
    )
    # Prior preservation
    prior: bool = option(
        "prior preservation with class images (default: on when a class noun is given)",
        section="prior",
        default=True,
    )
    class_images: int = option("number of class images", section="prior", at_least=0, default=100)
    class_dir: str | None = option(
        "folder of your own class images instead of generated ones", section="prior", default=None
    )
    prior_weight: float = option(
        "weight of the prior-preservation loss", section="prior", at_least=0, default=1.0
    )
    class_steps: int = option(
        "sampling steps when generating class images", section="prior", above=0, default=30
    )
    class_guidance: float | None = option(
        "guidance scale when generating class images (default: the model's: 7.5 for SD, 3.5 for Flux.1)",
        section="prior",
        at_least=0,
        example=7.5,
        default=None,
    )
    class_negative: str = option("negative prompt when generating class images", section="prior", default="")
    class_batch_size: int = option(
        "batch size when generating class images", section="prior", above=0, default=4
    )
    bank_dir: str | None = option(
        "where the class-image bank lives (default: ~/.cache/boothkit/class_images)",
        section="prior",
        default=None,
    )
    # LoRA
    rank: int = option("LoRA rank", section="method", above=0, default=4)
    lora_alpha: float | None = option(
        "LoRA alpha (default: the rank)", section="method", above=0, example=16, default=None
    )
    lora_dropout: float = option("LoRA dropout", section="method", at_least=0, below=1, default=0.0)
    target_modules: tuple[str, ...] | None = option(
        "denoiser modules that get LoRA (default: the family's, as its reference script: the UNet's "
        "attention to_q to_k to_v to_out.0; Flux's attention, added projections and feed-forwards)",
        section="method",
        default=None,
    )
    train_text_encoder: bool = option(
        "also train the text encoder(s) with LoRA on --text-encoder-targets", section="method", default=False
    )
    text_encoder_targets: tuple[str, ...] = option(
        "text-encoder modules that get LoRA with --train-text-encoder (attention as diffusers does; "
        "add fc1 fc2 for the MLPs too, as kohya's LoRA does; token_embedding adapts the token rows, "
        "the identifier's included, but then the LoRA loads in diffusers only, not in kohya's layout)",
        section="method",
        default=TEXT_ENCODER_ATTENTION,
    )
    text_encoder_lr: float | None = option(
        "text encoder learning rate (default: --lr)", section="method", above=0, example=5e-5, default=None
    )
    # Full fine-tune, textual inversion, pivotal tuning
    text_encoder_fraction: float = option(
        "stop training the text encoder(s) after this fraction of the steps",
        section="method",
        at_least=0,
        at_most=1,
        default=1.0,
    )
    ema: bool = option(
        "keep an exponential moving average of the trained weights and save it",
        section="method",
        default=False,
    )
    ema_decay: float = option("EMA decay", section="method", above=0, below=1, default=0.999)
    save_single_file: bool = option(
        "full fine-tune: also save one .safetensors in the original layout", section="method", default=False
    )
    num_vectors: int = option(
        "textual inversion: embedding vectors for the new token", section="method", above=0, default=1
    )
    initializer_token: str | None = option(
        "textual inversion: word whose embedding starts the new token (default: the class noun)",
        section="method",
        default=None,
    )
    ti_lr: float = option(
        "learning rate of the token embeddings (ti, pivotal)", section="method", above=0, default=5e-3
    )
    ti_fraction: float = option(
        "pivotal: train only the embeddings for this fraction of the steps, then only the LoRA (0: both together)",
        section="method",
        at_least=0,
        at_most=1,
        default=0.0,
    )
    # Optimisation
    steps: int = option("optimizer steps", section="optimisation", above=0, default=500)
    lr: float = option("learning rate", section="optimisation", above=0, default=1e-4)
    lr_schedule: LRSchedule = option("learning-rate schedule", section="optimisation", default="constant")
    warmup_steps: int = option("learning-rate warm-up steps", section="optimisation", at_least=0, default=0)
    batch_size: int = option(
        "instance images per step (as many class images are added)",
        section="optimisation",
        above=0,
        default=1,
    )
    grad_accum: int = option("gradient accumulation steps", section="optimisation", above=0, default=1)
    max_grad_norm: float = option(
        "gradient clipping norm (0: off)", section="optimisation", at_least=0, default=1.0
    )
    weight_decay: float = option("AdamW weight decay", section="optimisation", at_least=0, default=1e-2)
    adam_8bit: bool = option("8-bit AdamW from bitsandbytes", section="optimisation", default=False)
    snr_gamma: float | None = option(
        "min-SNR-gamma loss weighting (e.g. 5.0)", section="optimisation", above=0, example=5, default=None
    )
    noise_offset: float = option(
        "noise offset (e.g. 0.05; DDPM families)", section="optimisation", at_least=0, default=0.0
    )
    # Rectified flow (Flux, SD 3.5, ...): None means the family's default, its reference script's.
    timestep_sampling: TimestepSampling | None = option(
        "flow families: how training sigmas are drawn: uniform, logit_normal, mode (default: uniform)",
        section="optimisation",
        default=None,
    )
    logit_mean: float | None = option(
        "flow families: mean of logit_normal sampling (default 0)",
        section="optimisation",
        example=0,
        default=None,
    )
    logit_std: float | None = option(
        "flow families: std of logit_normal sampling (default 1)",
        section="optimisation",
        above=0,
        example=1,
        default=None,
    )
    mode_scale: float | None = option(
        "flow families: scale of mode sampling (default 1.29)",
        section="optimisation",
        example=1.29,
        default=None,
    )
    loss_weighting: LossWeighting | None = option(
        "flow families: loss weight per sigma: none, sigma_sqrt, cosmap (default: none)",
        section="optimisation",
        default=None,
    )
    flow_shift: float | None = option(
        "flow families: shift the training sigmas by this factor, as SD 3's sampler does with 3.0 "
        "(default: the model's own training sigmas)",
        section="optimisation",
        above=0,
        example=3.0,
        default=None,
    )
    flow_shift_by_resolution: bool = option(
        "flow families: shift the training sigmas by the image's size, as Flux's sampler does",
        section="optimisation",
        default=False,
    )
    train_guidance: float | None = option(
        "guidance-distilled models (Flux.1-dev): the guidance scale the transformer is given while it "
        "trains (default: 3.5)",
        section="optimisation",
        at_least=0,
        example=3.5,
        default=None,
    )
    mixed_precision: Precision = option(
        "mixed precision for the frozen weights and the forward pass", section="precision", default="no"
    )
    gradient_checkpointing: bool = option("trade compute for memory", section="precision", default=False)
    quantize_base: QuantizeBase | None = option(
        "store the frozen base denoiser's linear layers as int8, fp8 or nf4 (QLoRA; torchao, CPU or "
        "CUDA): about 1/2, 1/2 or 1/4 of bf16's memory; the LoRA itself trains in full precision",
        section="precision",
        default=None,
    )
    seed: int = option("random seed", section="optimisation", default=0)
    # Outputs
    sample_every: int = option(
        "validation samples every N steps (0: only at the end)", section="outputs", at_least=0, default=0
    )
    sample_prompts: tuple[str, ...] = option(
        "validation prompts", section="outputs", default=DEFAULT_VALIDATION_PROMPTS
    )
    sample_seeds: tuple[int, ...] = option("validation seeds", section="outputs", default=(0, 1))
    sample_steps: int = option("sampling steps for validation images", section="outputs", above=0, default=25)
    checkpoint_every: int = option(
        "save a resumable checkpoint every N steps (0: only on interrupt)",
        section="outputs",
        at_least=0,
        default=0,
    )
    keep_checkpoints: int | None = option(
        "keep only the newest K checkpoints (default: all)",
        section="outputs",
        above=0,
        example=3,
        default=None,
    )
    resume: str | None = option(
        "continue a run: its folder, or 'latest' for --output", section="resume", default=None
    )
    force_resume: bool = option(
        "resume even if the config or the images changed", section="resume", default=False
    )
    max_nan_steps: int = option(
        "stop after this many consecutive non-finite steps", section="resume", above=0, default=5
    )
    auto_batch_size: bool = option(
        "on out-of-memory, halve the batch and double accumulation", section="precision", default=False
    )
    allow_pickle: bool = option(
        "allow pickle checkpoints (.ckpt/.pt/.bin), loaded with weights_only", section="resume", default=False
    )
    device: str = option("cpu, cuda, cuda:1 or auto", section="precision", default="auto")

    def __post_init__(self) -> None:
        check_numbers(self)  # every number finite and in its field's range, before the rules below
        _validate(self)

    @property
    def uses_prior(self) -> bool:
        return self.prior and self.class_noun is not None


def _validate(c: TrainConfig) -> None:
    for name in REQUIRED:
        if not getattr(c, name):
            raise BoothkitError(f"--{name} is required")
    if c.resolution is not None and (c.resolution <= 0 or c.resolution % 8):
        raise BoothkitError(
            f"--resolution must be a positive multiple of 8, got {c.resolution}",
            hint=f"try {max(8, round(c.resolution / 8) * 8)}",
        )
    if not c.token.strip() or any(ch.isspace() for ch in c.token):
        raise BoothkitError(f"--token must be one word with no spaces, got {c.token!r}")
    if c.prior and c.class_noun is None:
        raise BoothkitError(
            "prior preservation needs a class noun: pass --class-noun (e.g. --class-noun dog)",
            hint="or turn prior preservation off with --no-prior",
        )
    if c.prior and c.class_dir is None and c.class_images == 0:
        raise BoothkitError("--class-images must be > 0 with prior preservation on (or pass --no-prior)")
    if c.class_prompts and c.class_dir is not None:
        raise BoothkitError(
            "--class-prompts generates class images and --class-dir brings your own: pass one of them",
            hint="to give your own class images prompts, put a name.txt caption beside each image",
        )
    for prompt in c.class_prompts:
        if not prompt.strip() or "\n" in prompt:
            raise BoothkitError(f"--class-prompts: {prompt!r} is not a one-line prompt")
    if c.class_noun is not None:
        if "{" in c.class_noun or "}" in c.class_noun:
            raise BoothkitError(f"--class-noun {c.class_noun!r} must be plain words, e.g. dog")
        if c.token.lower() in c.class_noun.lower().split():
            raise BoothkitError(
                f"--token {c.token} is the class noun ({c.class_noun}): the token names your subject, the "
                "class noun its kind",
                hint="pick a rare word for the token, e.g. --token sks --class-noun dog",
            )
    if c.uses_prior:
        used = [("--class-prompts", p) for p in c.class_prompts] or [("--class-prompt", c.class_prompt)]
        for flag, prompt in used if c.class_dir is None else []:
            if names_token(prompt, c.token):
                raise BoothkitError(
                    f"{flag} {prompt!r} names the token: class images teach what any {c.class_noun} looks "
                    "like, so a prompt with the token would bind it to every one of them",
                    hint="leave {token} out of class prompts, e.g. 'a photo of {class_noun} on a beach'",
                )
    if c.method in ("ti", "pivotal") and c.initializer_token is None and c.class_noun is None:
        raise BoothkitError(
            f"--method {c.method} needs a word to start the new token from: pass --class-noun or --initializer-token"
        )
    if c.train_text_encoder and c.method == "ti":
        raise BoothkitError(
            "--train-text-encoder does not apply to --method ti: textual inversion trains the new token's "
            "embedding only",
            hint="drop --train-text-encoder, or use --method pivotal (the embedding and a LoRA)",
        )
    if c.ema and c.method != "full":
        raise BoothkitError("--ema applies to --method full", hint="drop --ema, or use --method full")
    if c.quantize_base is not None and c.method == "full":
        raise BoothkitError(
            f"--quantize-base {c.quantize_base} does not apply to --method full: a full fine-tune trains "
            "the base weights themselves",
            hint="drop --quantize-base, or train a LoRA (--method lora)",
        )
    if c.save_single_file and c.method != "full":
        raise BoothkitError(
            "--save-single-file applies to --method full (a LoRA is exported with `boothkit export`)"
        )


def field_types() -> dict[str, Any]:
    return get_type_hints(TrainConfig)


def _coerce(name: str, value: Any, annotation: Any, source: str) -> Any:
    """Check a TOML value against the field's type, so a wrong type names the key and the file."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if value is None:
        return None
    if origin is Literal:
        if value not in args:
            raise BoothkitError(f"{source}: {name} = {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise BoothkitError(f"{source}: {name} must be a list, got {value!r}")
        return tuple(_coerce(name, v, args[0], source) for v in value)
    if args and type(None) in args:  # Optional[X]
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(name, value, inner, source)
    if annotation is bool:
        if not isinstance(value, bool):
            raise BoothkitError(f"{source}: {name} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise BoothkitError(f"{source}: {name} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BoothkitError(f"{source}: {name} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise BoothkitError(f"{source}: {name} must be a string, got {value!r}")
        return value
    return value


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into field values (keys may use - or _)."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BoothkitError(f"config file {p} does not exist") from None
    except IsADirectoryError:
        raise BoothkitError(
            f"--config {p} is a folder", hint="pass the .toml file (a run's own is config.toml)"
        ) from None
    except OSError as e:
        raise BoothkitError(f"config file {p} can't be read ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BoothkitError(f"config file {p} is not valid TOML: {e}") from None
    return coerce_values(raw, source=str(p))


def coerce_values(raw: dict[str, Any], *, source: str) -> dict[str, Any]:
    types = field_types()
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in types:
            raise BoothkitError(
                f"{source}: unknown setting {key!r}", hint="see `boothkit train --help` for the settings"
            )
        out[name] = _coerce(name, value, types[name], source)
    return out


def build_config(file_values: dict[str, Any], flag_values: dict[str, Any]) -> TrainConfig:
    """Defaults < TOML file < flags. `prior` follows the class noun unless set explicitly."""
    values = {**file_values, **flag_values}
    if "prior" not in values and values.get("class_noun") is None:
        values["prior"] = False
    return TrainConfig(**values)


def to_toml(config: TrainConfig) -> str:
    """The resolved config as TOML (None values are left out: they mean 'the default')."""
    data = {f.name: getattr(config, f.name) for f in fields(config) if getattr(config, f.name) is not None}
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
    return tomli_w.dumps(data)
