"""The settings of a toy base model's pretraining: the schema of ``boothkit toyworld pretrain``'s flags.

Each field declared with :func:`~boothkit.flags.option` is a flag of the same name (``vae_steps`` is
``--vae-steps``), listed in its section of the help. No torch import here: the CLI builds its
parser from this class, and ``--help`` stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from boothkit.flags import check_numbers, option

# The sections of `boothkit toyworld pretrain --help`, in order; each field names its own.
SECTIONS: dict[str, str] = {
    "model": "the model: its size and noise schedule",
    "vae": "phase 1: the autoencoder",
    "unet": "phase 2: UNet and text encoder",
    "data": "phase 2's training data and captions",
    "eval": "evaluation, and which evaluated state the folder keeps",
    "decoder": "decoder refinement after phase 2",
    "run": "device, seed, and what to start from",
}


@dataclass
class PretrainSettings:
    """Everything that decides the model (the flags of ``boothkit toyworld pretrain``).

    The defaults are the first phase of the shipped model's recipe; the recipe's later phases
    change some of these fields (:mod:`boothkit.toyworld.curriculum`).
    """

    steps: int = option("UNet + text encoder steps", section="unet", default=3000)
    vae_steps: int = option(
        "autoencoder steps (--vae-from and --init-from bring a trained autoencoder instead)",
        section="vae",
        default=800,
    )
    batch_size: int = option("UNet + text encoder batch size", section="unet", default=32)
    vae_batch_size: int = option("autoencoder batch size", section="vae", default=32)
    lr: float = option(
        "UNet + text encoder learning rate (AdamW, after a short warm-up)",
        section="unet",
        above=0,
        default=1e-3,
    )
    vae_lr: float = option("autoencoder learning rate", section="vae", above=0, default=1e-3)
    width: int = option(
        "channels of the first UNet block; the others are 2x and 3x", section="model", default=32
    )
    # "sd": Stable Diffusion's schedule and epsilon target. "zero-snr": the same betas rescaled to
    # zero terminal SNR, a v target and trailing timesteps (Lin et al. 2024), so that sampling from
    # pure noise is what training saw at its last step (see model.noise_schedule).
    schedule: Literal["sd", "zero-snr"] = option(
        "noise schedule: sd (epsilon target, default) or zero-snr (v target, zero terminal SNR)",
        section="model",
        default="sd",
    )
    pool: int = option(
        "encode this many renders once and sample batches from them (default 0: fresh renders)",
        section="data",
        default=0,
    )
    workers: int | None = option(
        "processes rendering the pool while the main one encodes (0: none; default: cores - 1, none on 2 cores)",
        section="data",
        default=None,
    )
    text_width: int = option(
        "width of the text encoder, and of the UNet's cross-attention", section="model", default=64
    )
    caption_dropout: float = option(
        "share of training captions left empty, so that classifier-free guidance works",
        section="data",
        at_least=0,
        at_most=1,
        default=0.1,
    )
    attribute_dropout: float = option(
        "chance that a training caption leaves out each of size, colour, position and background, "
        "so that short prompts mean something",
        section="data",
        at_least=0,
        at_most=1,
        default=0.15,
    )
    ema_decay: float = option(
        "decay of the weights' moving average that is evaluated and saved (default 0.995; 0: the raw weights)",
        section="unet",
        at_least=0,
        below=1,
        default=0.995,
    )
    snr_gamma: float = option(
        "gamma of the min-SNR loss weights (floored at one for the v target)",
        section="unet",
        above=0,
        default=5.0,
    )
    # The high-noise steps are where x_t shows nothing and the layout can come only from the caption:
    # steps at t=999 alone are what teach the model position words (BENCHMARKS.md, the noise schedule).
    high_noise_share: float = option(
        "share of timesteps drawn from --high-noise-from to 999, where only the caption shows the layout (default 0)",
        section="unet",
        at_least=0,
        at_most=1,
        default=0.0,
    )
    high_noise_from: int = option(
        "first timestep of the high-noise range (default 750; 999: the pure-noise step alone)",
        section="unet",
        default=750,
    )
    eval_every: int = option(
        "evaluate the weights' moving average on held-out captions every N steps", section="eval", default=250
    )
    eval_images: int = option("held-out captions per evaluation", section="eval", default=56)
    eval_steps: int = option("sampling steps of each evaluation image", section="eval", default=20)
    guidance: float = option(
        "guidance scale of the evaluation images", section="eval", at_least=0, default=5.0
    )
    max_minutes: float | None = option(
        "stop the UNet phase after this long, in minutes (the VAE phase is not counted)",
        section="unet",
        above=0,
        example=60,
        default=None,
    )
    # A model that never saw a multi-colour object cannot learn one from a few photos; a real base
    # model has seen every kind of look before DreamBooth. Never a subject's look.
    multicolor_share: float = option(
        "share of the UNet's training objects painted in several colours, captioned without one",
        section="data",
        at_least=0,
        at_most=1,
        default=0.0,
    )
    named_share: float = option(
        "share of those multi-colour objects named in the caption right before the shape: by an "
        "identifier (sks, zwx, ...), or with --individuals by an individual's name",
        section="data",
        at_least=0,
        at_most=1,
        default=0.0,
    )
    # Each individual is a made-up name with one shape and one multi-colour look of its own
    # (captions.INDIVIDUALS), as a web-scale model has seen named people and things whose look their
    # name means: the model learns that a word before the shape can carry a look, which is what
    # DreamBooth asks of "sks". A name that means no look (an identifier drawn afresh each time) is
    # a word the model learns to ignore (BENCHMARKS.md).
    individuals: int = option(
        "with --named-share: the named objects are this many fixed individuals, a look per name (up to 48)",
        section="data",
        default=0,
    )
    decoder_steps: int = option(
        "decoder-only refinement steps after the UNet phase (encoder frozen)", section="decoder", default=0
    )
    # A decoder that saw one-colour objects only blurs a subject's colour regions into one.
    decoder_multicolor_share: float = option(
        "share of the decoder refinement's objects painted in several colours",
        section="decoder",
        at_least=0,
        at_most=1,
        default=0.0,
    )
    device: str = option("cpu or cuda", section="run", default="cpu")
    seed: int = option("seed of the data, the initial weights and the noise", section="run", default=0)
    threads: int | None = option("torch CPU threads (default: torch's)", section="run", default=None)
    vae_from: str = option(
        "reuse the trained VAE of this model folder instead of training one", section="run", default=""
    )
    init_from: str = option(
        "continue pretraining this toy model folder (its tokenizer, text encoder, UNet and VAE)",
        section="run",
        default="",
    )
    # "last" is for a phase of a curriculum, whose own scores are not the point.
    keep: Literal["best", "last"] = option(
        "which evaluated state the folder keeps: best joint fidelity (default) or the last",
        section="eval",
        default="best",
    )
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_numbers(self)  # every number finite and in its field's range; the counts: check_sources


__all__ = ["SECTIONS", "PretrainSettings"]
