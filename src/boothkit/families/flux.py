"""Flux.1 (dev and schnell): a rectified-flow transformer on 2x2-packed latent tokens.

Conditioning is T5's hidden states (the sequence the transformer attends to) and CLIP's pooled
embedding, plus, for the guidance-distilled Flux.1-dev, the guidance scale itself as an input
(``--train-guidance``, 3.5 as diffusers' script). Latents are the VAE's, shifted then scaled,
packed into tokens for the transformer and unpacked again (``FluxPipeline``'s own packing, with its
latent image ids). Training follows ``train_dreambooth_lora_flux.py``: its sigma grid, sampling and
loss weighting (:class:`boothkit.objectives.RectifiedFlow`) and its LoRA targets.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

from boothkit.config import TrainConfig
from boothkit.errors import BoothkitError
from boothkit.families.base import (
    DDPM_SETTINGS,
    Conditioning,
    FamilyName,
    ModelSource,
    refuse_settings,
    vae_posterior,
    vae_scale_factor,
)
from boothkit.objectives import Objective, RectifiedFlow

# train_dreambooth_lora_flux.py's LoRA targets: attention, the added (text) projections, both MLPs.
FLUX_LORA_TARGETS: tuple[str, ...] = (
    "attn.to_k",
    "attn.to_q",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_k_proj",
    "attn.add_q_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
)
DEFAULT_TRAIN_GUIDANCE = 3.5
T5_TOKENS = 512  # the T5 sequence FluxPipeline encodes prompts to, in training as in sampling


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C) tokens: ``FluxPipeline._pack_latents``."""
    b, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, h/2 * w/2, 4C) tokens -> (B, C, h, w), for latents of ``height`` x ``width``."""
    return FluxPipeline._unpack_latents(tokens, height, width, 1)


def latent_ids(height: int, width: int, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """The packed tokens' positions (h/2 * w/2, 3): ``FluxPipeline._prepare_latent_image_ids``."""
    return FluxPipeline._prepare_latent_image_ids(1, height // 2, width // 2, device, dtype)


class Flux:
    prediction_type = "flow"
    denoiser_name = "transformer"
    # A learned token lives in both CLIP and T5, saved as diffusers' advanced Flux DreamBooth script
    # saves it ({"clip_l", "t5"}), and loaded into each with `load_textual_inversion`.
    learns_tokens = True
    embedding_keys = ("clip_l", "t5")
    default_guidance = 3.5  # FluxPipeline's: the distilled guidance Flux.1-dev was made for

    def __init__(self, name: FamilyName, source: ModelSource, components: dict[str, Any]) -> None:
        self.name = name
        self.source = source
        self.transformer = components["transformer"]
        self.denoiser = self.transformer
        self.vae = components["vae"]
        self.text_encoders = [components["text_encoder"], components["text_encoder_2"]]
        self.tokenizers = [components["tokenizer"], components["tokenizer_2"]]
        self.inference_scheduler = components["scheduler"]
        # The training sigmas: the scheduler's grid as its config defines it (shifted, or not for the
        # dynamically shifted dev and schnell), exactly as the reference script draws from it.
        self.training_scheduler = FlowMatchEulerDiscreteScheduler.from_config(components["scheduler"].config)
        self.guidance_distilled = bool(self.transformer.config.guidance_embeds)
        self.train_guidance = DEFAULT_TRAIN_GUIDANCE
        self.extra_components: dict[str, Any] = {}

    @property
    def vae_scale_factor(self) -> int:
        return vae_scale_factor(self.vae)

    @property
    def default_resolution(self) -> int:
        return 1024 if self.vae_scale_factor == 8 else 128 * self.vae_scale_factor  # FluxPipeline's default

    @property
    def default_lora_targets(self) -> tuple[str, ...]:
        return FLUX_LORA_TARGETS

    def objective(self, config: TrainConfig) -> Objective:
        refuse_settings(config, DDPM_SETTINGS, self.name, "it is trained with rectified flow, not DDPM noise")
        if config.mixed_precision == "fp16":
            raise BoothkitError(
                "--mixed-precision fp16: Flux.1's activations overflow in fp16 (its own weights are bf16)",
                hint="use --mixed-precision bf16",
            )
        if not self.guidance_distilled:
            refuse_settings(
                config,
                ("train_guidance",),
                self.name,
                "this model takes no guidance input (as Flux.1-schnell)",
            )
        self.train_guidance = (
            config.train_guidance if config.train_guidance is not None else DEFAULT_TRAIN_GUIDANCE
        )
        sched = self.training_scheduler
        return RectifiedFlow(
            sched.sigmas,
            num_train_timesteps=int(sched.config.num_train_timesteps),
            sampling=config.timestep_sampling or "uniform",
            weighting=config.loss_weighting or "none",
            logit_mean=0.0 if config.logit_mean is None else config.logit_mean,
            logit_std=1.0 if config.logit_std is None else config.logit_std,
            mode_scale=1.29 if config.mode_scale is None else config.mode_scale,
            shift=config.flow_shift,
            by_resolution=config.flow_shift_by_resolution,
        )

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        # As FluxPipeline.encode_prompt: CLIP's pooled output, T5's last hidden states.
        (clip_tok, t5_tok), (clip, t5) = self.tokenizers, self.text_encoders
        clip_ids = clip_tok(
            prompts,
            padding="max_length",
            max_length=clip_tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(clip.device)
        pooled = clip(clip_ids, output_hidden_states=False).pooler_output  # (B, P)
        t5_ids = t5_tok(
            prompts, padding="max_length", max_length=T5_TOKENS, truncation=True, return_tensors="pt"
        ).input_ids.to(t5.device)
        states = t5(t5_ids, output_hidden_states=False)[0]  # (B, L, D)
        return Conditioning(states, pooled)

    def time_ids(
        self, original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]
    ) -> torch.Tensor:
        return torch.zeros(0)

    def predict(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning, time_ids: torch.Tensor
    ) -> torch.Tensor:
        assert cond.pooled is not None, "Flux conditioning needs CLIP's pooled embedding"
        b, _, h, w = noisy_latents.shape
        device, dtype = noisy_latents.device, noisy_latents.dtype
        guidance = (
            torch.full((b,), self.train_guidance, device=device, dtype=torch.float32)
            if self.guidance_distilled
            else None
        )
        tokens = self.transformer(
            hidden_states=pack_latents(noisy_latents),
            timestep=(timesteps / 1000).to(dtype),  # the transformer scales it by 1000 again
            guidance=guidance,
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.hidden_states,
            txt_ids=torch.zeros(cond.hidden_states.shape[1], 3, device=device, dtype=dtype),
            img_ids=latent_ids(h, w, device, dtype),
            return_dict=False,
        )[0]
        return unpack_latents(tokens, h, w)

    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return vae_posterior(self.vae, pixels)

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.vae.config
        return (latents - config.shift_factor) * config.scaling_factor

    def prompt_embeddings(self, pipe: Any, prompt: str, negative: str, guidance: float) -> dict[str, Any]:
        # Flux.1 is guidance-distilled: no negative prompt, guidance is an input (guidance_scale).
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=prompt,
            prompt_2=None,
            device=getattr(pipe, "_execution_device", "cpu"),
            num_images_per_prompt=1,
        )
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def starting_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return pack_latents(latents)

    def pipeline_class(self) -> Any:
        return FluxPipeline

    def pipeline(self) -> Any:
        return FluxPipeline(
            scheduler=self.inference_scheduler,
            vae=self.vae,
            text_encoder=self.text_encoders[0],
            tokenizer=self.tokenizers[0],
            text_encoder_2=self.text_encoders[1],
            tokenizer_2=self.tokenizers[1],
            transformer=self.transformer,
        )

    def trainable_text_encoders(self) -> dict[str, Any]:
        return {"text_encoder": self.text_encoders[0]}  # CLIP; T5 stays frozen, as in the reference
