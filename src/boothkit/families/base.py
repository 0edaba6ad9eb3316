"""The interface every model family implements, so the training loop never branches on family."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from diffusers import DiffusionPipeline

from boothkit.config import TrainConfig
from boothkit.errors import BoothkitError
from boothkit.objectives import DDPM, Objective

FamilyName = Literal["sd1", "sd2", "sdxl", "flux1"]
# How messages name each family.
FAMILY_NAMES: dict[str, str] = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "flux1": "Flux.1"}
PredictionType = Literal["epsilon", "v_prediction"]


@dataclass
class Conditioning:
    """What the UNet is conditioned on besides the noisy latents and the timestep.

    hidden_states: (B, L, D) text-encoder states for cross-attention.
    pooled: (B, P) pooled text embedding (SDXL's `text_embeds`), or None.
    """

    hidden_states: torch.Tensor
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.hidden_states.shape[0]

    def select(self, index: torch.Tensor | list[int]) -> Conditioning:
        idx = torch.as_tensor(index, device=self.hidden_states.device)
        return Conditioning(
            self.hidden_states.index_select(0, idx),
            None if self.pooled is None else self.pooled.index_select(0, idx),
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Conditioning:
        return Conditioning(
            self.hidden_states.to(device, dtype),
            None if self.pooled is None else self.pooled.to(device, dtype),
        )

    @staticmethod
    def cat(items: list[Conditioning]) -> Conditioning:
        pooled = [c.pooled for c in items]
        return Conditioning(
            torch.cat([c.hidden_states for c in items]),
            None if any(p is None for p in pooled) else torch.cat(pooled),  # type: ignore[arg-type]
        )


@dataclass
class ModelSource:
    """Where a model came from, and the fingerprint that identifies its weights."""

    spec: str  # what the user passed
    path: Path  # the local diffusers folder or single file
    fingerprint: str  # stable hash of configs and weight files (class-image bank key)
    single_file: bool = False
    config_source: str | None = None  # for single files: where the configs came from


class Family(Protocol):
    """A loaded base model of one family: its components, and the family-specific pieces of training
    and sampling, so the loop never asks which family it has.

    Implementations: `families.sd.SD` (SD 1.x / 2.x), `families.sdxl.SDXL`, `families.flux.Flux`.
    """

    name: FamilyName
    source: ModelSource
    denoiser: Any  # the network that trains: a UNet or a transformer
    denoiser_name: str  # its component name (unet, transformer): in pipelines, LoRA files and checkpoints
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    extra_components: dict[str, Any]

    @property
    def prediction_type(self) -> str:
        """What the denoiser predicts: epsilon, v_prediction or flow."""
        ...

    @property
    def default_resolution(self) -> int: ...

    @property
    def vae_scale_factor(self) -> int: ...

    @property
    def default_guidance(self) -> float:
        """The guidance scale sampling uses unless told otherwise (the model's pipeline's own)."""
        ...

    @property
    def learns_tokens(self) -> bool:
        """Whether textual inversion (and pivotal tuning) can learn a new token for this family: its
        embeddings saved in a file the family's pipeline loads."""
        ...

    @property
    def embedding_keys(self) -> tuple[str, ...]:
        """The keys of a learned token's embeddings file, one per text encoder in order, as the
        family's tools write them (SDXL's ``clip_l``/``clip_g``, Flux's ``clip_l``/``t5``); empty
        for one text encoder, whose file is keyed by the token itself (A1111's layout)."""
        ...

    @property
    def default_lora_targets(self) -> tuple[str, ...]:
        """The denoiser's modules a LoRA adapts unless --target-modules says otherwise (each family's
        reference training script's choice)."""
        ...

    def objective(self, config: TrainConfig) -> Objective:
        """What training asks the denoiser to predict, with the run's settings of it (DDPM's min-SNR and
        noise offset, rectified flow's sigma sampling and weighting); settings that do not apply to
        this family are refused by name."""
        ...

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """Tokenise and encode; gradients flow when a text encoder is being trained."""
        ...

    def time_ids(
        self, original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]
    ) -> torch.Tensor:
        """Per-image micro-conditioning (SDXL's 6 size/crop ids); an empty tensor for families without it."""
        ...

    def predict(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning, time_ids: torch.Tensor
    ) -> torch.Tensor:
        """The denoiser's prediction for latents (B, C, h, w), in the same layout (a family that packs
        latents into tokens packs and unpacks them here)."""
        ...

    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior (mean, std) of images in [-1, 1], unscaled; sample and scale with `scale_latents`."""
        ...

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor: ...

    def pipeline(self) -> Any:
        """A diffusers pipeline sharing this model's (possibly adapted) components."""
        ...

    def pipeline_class(self) -> Any: ...

    def prompt_embeddings(self, pipe: Any, prompt: str, negative: str, guidance: float) -> dict[str, Any]:
        """``prompt`` encoded once by the pipeline, as the keyword arguments its call takes (so frames
        that share a prompt do not encode it again)."""
        ...

    def starting_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The pipeline's ``latents=`` argument for starting noise (B, C, h, w) (Flux packs it)."""
        ...

    def trainable_text_encoders(self) -> dict[str, Any]:
        """The text encoders a run may train (a LoRA, a full fine-tune), by the names the pipeline's
        `save_lora_weights` gives their layers (Flux trains its CLIP encoder, not T5)."""
        ...


# A UNet's LoRA targets as diffusers' DreamBooth scripts choose them: the attention projections.
UNET_LORA_TARGETS: tuple[str, ...] = ("to_k", "to_q", "to_v", "to_out.0")
# Settings of rectified-flow training, and of DDPM training: each family refuses the other kind's.
FLOW_SETTINGS: tuple[str, ...] = (
    "timestep_sampling",
    "logit_mean",
    "logit_std",
    "mode_scale",
    "loss_weighting",
    "flow_shift",
    "flow_shift_by_resolution",
)
DDPM_SETTINGS: tuple[str, ...] = ("snr_gamma", "noise_offset")


def refuse_settings(config: TrainConfig, names: tuple[str, ...], family: str, why: str) -> None:
    """Refuse ``names`` of ``config`` that are set (not their default) for a family they do not apply to."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for name in names:
        if getattr(config, name) != defaults[name]:
            raise BoothkitError(
                f"--{name.replace('_', '-')} does not apply to {FAMILY_NAMES.get(family, family)}: {why}",
                hint=f"drop --{name.replace('_', '-')}",
            )


def ddpm_objective(family: str, scheduler: Any, config: TrainConfig) -> DDPM:
    """The DDPM objective of a UNet family, with the run's min-SNR and noise offset."""
    refuse_settings(config, FLOW_SETTINGS, family, "it is trained with DDPM noise, not rectified flow")
    refuse_settings(config, ("train_guidance",), family, "it is not a guidance-distilled model")
    return DDPM(scheduler, snr_gamma=config.snr_gamma, noise_offset=config.noise_offset)


def unet_prompt_embeddings(pipe: Any, prompt: str, negative: str, guidance: float) -> dict[str, Any]:
    """A UNet pipeline's prompt embedding as call arguments (SD's encode_prompt returns 2 tensors,
    SDXL's 4: with and without the prompt, pooled or not)."""
    encoded = pipe.encode_prompt(
        prompt=prompt,
        device=getattr(pipe, "_execution_device", "cpu"),
        num_images_per_prompt=1,
        do_classifier_free_guidance=guidance > 1,
        negative_prompt=negative or None,
    )
    names = [
        "prompt_embeds",
        "negative_prompt_embeds",
        "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds",
    ]
    return {k: v for k, v in zip(names, encoded, strict=False) if v is not None}


def vae_scale_factor(vae: Any) -> int:
    return int(2 ** (len(vae.config.block_out_channels) - 1))


def vae_posterior(vae: Any, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the VAE's latent distribution. Cached once per image by the trainer, so sampling
    `mean + std * noise` each step matches encoding every step without running the VAE again."""
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return dist.mean, dist.std


@dataclass
class LoadOptions:
    model_config: str | None = None
    prediction_type: PredictionType | None = None
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    allow_pickle: bool = False


def load_pipeline_folder(path: str | Path) -> Any:
    """A diffusers pipeline from a local folder as it is (every component it holds), offline, on
    the CPU in float32: what export verifies and merges into."""
    folder = Path(path)
    if not (folder / "model_index.json").is_file():
        raise BoothkitError(
            f"{folder} is not a diffusers pipeline folder (no model_index.json)",
            hint="pass the folder a boothkit run or `save_pretrained` wrote",
        )
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    # A real SD 1.x folder ships a safety checker; none of boothkit's uses of a pipeline need it.
    extra = {"safety_checker": None} if "safety_checker" in index else {}
    try:
        return DiffusionPipeline.from_pretrained(folder, local_files_only=True, **extra)
    except (OSError, ValueError) as e:
        raise BoothkitError(
            f"could not load the diffusers model in {folder}: {str(e).splitlines()[0]}"
        ) from None


# ----------------------------------------------------------------------------- prompts longer than the encoder reads


@dataclass(frozen=True)
class Overflow:
    """A prompt longer than a text encoder reads: its length and the limit in tokens (start and end
    markers aside), and the text kept and the text cut off."""

    tokens: int
    limit: int
    kept: str
    cut: str


def prompt_overflow(tokenizer: Any, prompt: str) -> Overflow | None:
    """Where ``tokenizer`` cuts ``prompt`` (CLIP reads 77 tokens, its start and end markers among
    them), or None when all of it is read."""
    limit = int(tokenizer.model_max_length) - 2
    if limit <= 0 or limit > 100_000:  # a tokenizer that states no limit
        return None
    ids = tokenizer(prompt, add_special_tokens=False, truncation=False).input_ids
    if len(ids) <= limit:
        return None
    return Overflow(
        len(ids), limit, tokenizer.decode(ids[:limit]).strip(), tokenizer.decode(ids[limit:]).strip()
    )


def prompt_fit(tokenizers: list[Any], prompt: str, words: list[str]) -> str | None:
    """A warning when ``prompt`` is longer than the text encoder reads, saying what is cut; a refusal
    when one of ``words`` (the identifier that calls the subject) is only in the part that is cut."""
    for tokenizer in tokenizers:
        over = prompt_overflow(tokenizer, prompt)
        if over is None:
            continue
        for word in words:
            named = re.compile(rf"(?<![\w<]){re.escape(word.lower())}(?![\w>])")
            if named.search(prompt.lower()) and not named.search(over.kept.lower()):
                raise BoothkitError(
                    f"prompt {prompt!r} is {over.tokens} tokens long and the text encoder reads the first "
                    f"{over.limit}: {word} is in the part that is cut off ({over.cut!r})",
                    hint=f"shorten the prompt, or name {word} earlier in it",
                )
        return (
            f"prompt {prompt[:60]!r}... is {over.tokens} tokens long and the text encoder reads the first "
            f"{over.limit}: {over.cut!r} is left out"
        )
    return None
