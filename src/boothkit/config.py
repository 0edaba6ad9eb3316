"""The run configuration: one frozen dataclass, loaded from TOML, overridden by flags, validated.

The dataclass is the schema: each field is a flag (`rank` -> `--rank`, `class_noun` -> `--class-noun`),
a TOML key, and a line of the resolved `config.toml` every run writes beside its outputs. No torch
import here, so `boothkit --help` and config errors are instant.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from boothkit.errors import BoothkitError

Method = Literal["lora", "full", "ti", "pivotal"]
Precision = Literal["no", "fp16", "bf16"]
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


def _opt(help: str, **kwargs: Any) -> Any:
    return field(metadata={"help": help}, **kwargs)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that shapes a training run. Field docs are the CLI help."""

    # What to train on and where to write
    model: str = _opt("base model: hub id, local diffusers folder, or single-file .safetensors", default="")
    images: str = _opt("folder of instance photos of the subject", default="")
    output: str = _opt(
        "run folder to write (created; an existing non-empty folder must be a boothkit run)", default=""
    )
    token: str = _opt("identifier token bound to the subject", default="sks")
    class_noun: str | None = _opt(
        "class of the subject, e.g. dog (needed for prior preservation)", default=None
    )
    method: Method = _opt("training method", default="lora")
    instance_prompt: str = _opt(
        "prompt template for instance images", default="a photo of {token} {class_noun}"
    )
    class_prompt: str = _opt("prompt for class (prior) images", default="a photo of {class_noun}")
    class_prompts: tuple[str, ...] = _opt(
        "several prompts for class images, used in turn (e.g. the contexts your captions name: "
        "'a photo of {class_noun} on a beach'); each class image trains on its own prompt",
        default=(),
    )
    model_config: str | None = _opt(
        "for a single-file checkpoint: diffusers folder or hub id holding the matching configs", default=None
    )
    prediction_type: Literal["epsilon", "v_prediction"] | None = _opt(
        "override the prediction type read from the model's scheduler config", default=None
    )
    # Images
    resolution: int | None = _opt("training resolution (default: the model's native size)", default=None)
    flip: bool = _opt("random horizontal flip of instance images", default=False)
    crop: Literal["center", "random"] = _opt("how non-square photos are cropped", default="center")
    buckets: bool = _opt(
        "aspect-ratio bucketing: train each photo near its own shape at about the same pixel count",
        default=False,
    )
    alpha_background: str = _opt("colour transparent areas are composited onto", default="white")
    skip_invalid: bool = _opt("train on the valid images when some are rejected", default=False)
    # Prior preservation
    prior: bool = _opt("prior preservation with class images (on when a class noun is given)", default=True)
    class_images: int = _opt("number of class images", default=100)
    class_dir: str | None = _opt("folder of your own class images instead of generated ones", default=None)
    prior_weight: float = _opt("weight of the prior-preservation loss", default=1.0)
    class_steps: int = _opt("sampling steps when generating class images", default=30)
    class_guidance: float = _opt("guidance scale when generating class images", default=7.5)
    class_negative: str = _opt("negative prompt when generating class images", default="")
    class_batch_size: int = _opt("batch size when generating class images", default=4)
    bank_dir: str | None = _opt(
        "where the class-image bank lives (default: ~/.cache/boothkit/class_images)", default=None
    )
    # LoRA
    rank: int = _opt("LoRA rank", default=4)
    lora_alpha: float | None = _opt("LoRA alpha (default: the rank)", default=None)
    lora_dropout: float = _opt("LoRA dropout", default=0.0)
    target_modules: tuple[str, ...] = _opt(
        "UNet modules that get LoRA", default=("to_k", "to_q", "to_v", "to_out.0")
    )
    train_text_encoder: bool = _opt(
        "also train the text encoder(s) with LoRA on --text-encoder-targets", default=False
    )
    text_encoder_targets: tuple[str, ...] = _opt(
        "text-encoder modules that get LoRA with --train-text-encoder (attention as diffusers does; "
        "add fc1 fc2 for the MLPs too, as kohya's LoRA does; token_embedding adapts the token rows, "
        "the identifier's included, but then the LoRA loads in diffusers only, not in kohya's layout)",
        default=TEXT_ENCODER_ATTENTION,
    )
    text_encoder_lr: float | None = _opt("text encoder learning rate (default: --lr)", default=None)
    # Full fine-tune, textual inversion, pivotal tuning
    text_encoder_fraction: float = _opt(
        "stop training the text encoder(s) after this fraction of the steps", default=1.0
    )
    ema: bool = _opt("keep an exponential moving average of the trained weights and save it", default=False)
    ema_decay: float = _opt("EMA decay", default=0.999)
    save_single_file: bool = _opt(
        "full fine-tune: also save one .safetensors in the original layout", default=False
    )
    num_vectors: int = _opt("textual inversion: embedding vectors for the new token", default=1)
    initializer_token: str | None = _opt(
        "textual inversion: word whose embedding starts the new token (default: the class noun)", default=None
    )
    ti_lr: float = _opt("learning rate of the token embeddings (ti, pivotal)", default=5e-3)
    ti_fraction: float = _opt(
        "pivotal: train only the embeddings for this fraction of the steps, then only the LoRA (0: both together)",
        default=0.0,
    )
    # Optimisation
    steps: int = _opt("optimizer steps", default=500)
    lr: float = _opt("learning rate", default=1e-4)
    lr_schedule: LRSchedule = _opt("learning-rate schedule", default="constant")
    warmup_steps: int = _opt("learning-rate warm-up steps", default=0)
    batch_size: int = _opt("instance images per step (as many class images are added)", default=1)
    grad_accum: int = _opt("gradient accumulation steps", default=1)
    max_grad_norm: float = _opt("gradient clipping norm (0: off)", default=1.0)
    weight_decay: float = _opt("AdamW weight decay", default=1e-2)
    adam_8bit: bool = _opt("8-bit AdamW from bitsandbytes", default=False)
    snr_gamma: float | None = _opt("min-SNR-gamma loss weighting (e.g. 5.0)", default=None)
    noise_offset: float = _opt("noise offset (e.g. 0.05)", default=0.0)
    mixed_precision: Precision = _opt(
        "mixed precision for the frozen weights and the forward pass", default="no"
    )
    gradient_checkpointing: bool = _opt("trade compute for memory", default=False)
    seed: int = _opt("random seed", default=0)
    # Outputs
    sample_every: int = _opt("validation samples every N steps (0: only at the end)", default=0)
    sample_prompts: tuple[str, ...] = _opt("validation prompts", default=DEFAULT_VALIDATION_PROMPTS)
    sample_seeds: tuple[int, ...] = _opt("validation seeds", default=(0, 1))
    sample_steps: int = _opt("sampling steps for validation images", default=25)
    checkpoint_every: int = _opt(
        "save a resumable checkpoint every N steps (0: only on interrupt)", default=0
    )
    keep_checkpoints: int | None = _opt("keep only the newest K checkpoints (default: all)", default=None)
    resume: str | None = _opt("continue a run: its folder, or 'latest' for --output", default=None)
    force_resume: bool = _opt("resume even if the config or the images changed", default=False)
    max_nan_steps: int = _opt("stop after this many consecutive non-finite steps", default=5)
    auto_batch_size: bool = _opt("on out-of-memory, halve the batch and double accumulation", default=False)
    allow_pickle: bool = _opt(
        "allow pickle checkpoints (.ckpt/.pt/.bin), loaded with weights_only", default=False
    )
    device: str = _opt("cpu, cuda, cuda:1 or auto", default="auto")

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def uses_prior(self) -> bool:
        return self.prior and self.class_noun is not None


def _positive(name: str, value: float | None, *, what: str = "a positive number") -> None:
    if value is not None and value <= 0:
        raise BoothkitError(f"--{flag_name(name)} must be {what}, got {value}")


def _validate(c: TrainConfig) -> None:
    for name in ("model", "images", "output"):
        if not getattr(c, name):
            raise BoothkitError(f"--{name} is required")
    _positive("rank", c.rank, what="a positive integer (typical: 4-64)")
    _positive("steps", c.steps, what="a positive integer")
    _positive("lr", c.lr)
    _positive("batch_size", c.batch_size, what="a positive integer")
    _positive("grad_accum", c.grad_accum, what="a positive integer")
    _positive("class_batch_size", c.class_batch_size, what="a positive integer")
    _positive("class_steps", c.class_steps, what="a positive integer")
    _positive("sample_steps", c.sample_steps, what="a positive integer")
    _positive("text_encoder_lr", c.text_encoder_lr)
    _positive("snr_gamma", c.snr_gamma)
    if c.resolution is not None and (c.resolution <= 0 or c.resolution % 8):
        raise BoothkitError(
            f"--resolution must be a positive multiple of 8, got {c.resolution}",
            hint=f"try {max(8, round(c.resolution / 8) * 8)}",
        )
    for name in (
        "class_images",
        "warmup_steps",
        "sample_every",
        "checkpoint_every",
        "noise_offset",
        "max_grad_norm",
    ):
        if getattr(c, name) < 0:
            raise BoothkitError(f"--{flag_name(name)} must be >= 0, got {getattr(c, name)}")
    _positive("keep_checkpoints", c.keep_checkpoints, what="a positive integer")
    _positive("max_nan_steps", c.max_nan_steps, what="a positive integer")
    if c.prior_weight < 0:
        raise BoothkitError(f"--prior-weight must be >= 0, got {c.prior_weight}")
    if not 0 <= c.lora_dropout < 1:
        raise BoothkitError(f"--lora-dropout must be in [0, 1), got {c.lora_dropout}")
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
        from boothkit.data.captions import names_token

        used = [("--class-prompts", p) for p in c.class_prompts] or [("--class-prompt", c.class_prompt)]
        for flag, prompt in used if c.class_dir is None else []:
            if names_token(prompt, c.token):
                raise BoothkitError(
                    f"{flag} {prompt!r} names the token: class images teach what any {c.class_noun} looks "
                    "like, so a prompt with the token would bind it to every one of them",
                    hint="leave {token} out of class prompts, e.g. 'a photo of {class_noun} on a beach'",
                )
    for name in ("text_encoder_fraction", "ti_fraction"):
        if not 0 <= getattr(c, name) <= 1:
            raise BoothkitError(f"--{flag_name(name)} must be between 0 and 1, got {getattr(c, name)}")
    if not 0 < c.ema_decay < 1:
        raise BoothkitError(f"--ema-decay must be between 0 and 1 (e.g. 0.999), got {c.ema_decay}")
    _positive("num_vectors", c.num_vectors, what="a positive integer")
    _positive("ti_lr", c.ti_lr)
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
    if c.save_single_file and c.method != "full":
        raise BoothkitError(
            "--save-single-file applies to --method full (a LoRA is exported with `boothkit export`)"
        )


def flag_name(field_name: str) -> str:
    return field_name.replace("_", "-")


def field_help(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("help", ""))


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
    import tomli_w

    data = {f.name: getattr(config, f.name) for f in fields(config) if getattr(config, f.name) is not None}
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
    return tomli_w.dumps(data)
