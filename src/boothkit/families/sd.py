"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, last hidden state, no micro-conditioning.

SD 2.x differs only in its text encoder (OpenCLIP-H in CLIP layout), linear attention projections
and, for the 768 px models, v-prediction, which is read from the scheduler config.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusionPipeline

from boothkit.config import TrainConfig
from boothkit.families.base import (
    UNET_LORA_TARGETS,
    Conditioning,
    FamilyName,
    ModelSource,
    PredictionType,
    ddpm_objective,
    unet_prompt_embeddings,
    vae_posterior,
    vae_scale_factor,
)
from boothkit.objectives import Objective


class SD:
    def __init__(
        self,
        name: FamilyName,
        source: ModelSource,
        components: dict[str, Any],
        noise_scheduler: Any,
        prediction_type: PredictionType,
    ) -> None:
        self.name = name
        self.source = source
        self.unet = components["unet"]
        self.denoiser = self.unet
        self.denoiser_name = "unet"
        self.vae = components["vae"]
        self.text_encoders = [components["text_encoder"]]
        self.tokenizers = [components["tokenizer"]]
        self.inference_scheduler = components["scheduler"]
        self.noise_scheduler = noise_scheduler
        self.prediction_type = prediction_type
        self.extra_components: dict[str, Any] = {}

    learns_tokens = True
    embedding_keys: tuple[str, ...] = ()
    default_guidance = 7.5

    @property
    def default_lora_targets(self) -> tuple[str, ...]:
        return UNET_LORA_TARGETS

    def objective(self, config: TrainConfig) -> Objective:
        return ddpm_objective(self.name, self.noise_scheduler, config)

    @property
    def vae_scale_factor(self) -> int:
        return vae_scale_factor(self.vae)

    @property
    def default_resolution(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        tokenizer, encoder = self.tokenizers[0], self.text_encoders[0]
        ids = tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(encoder.device)
        return Conditioning(encoder(ids)[0])

    def time_ids(
        self, original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]
    ) -> torch.Tensor:
        return torch.zeros(0)

    def predict(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning, time_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(
            noisy_latents, timesteps, encoder_hidden_states=cond.hidden_states, return_dict=False
        )[0]

    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return vae_posterior(self.vae, pixels)

    def scale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents * self.vae.config.scaling_factor

    def prompt_embeddings(self, pipe: Any, prompt: str, negative: str, guidance: float) -> dict[str, Any]:
        return unet_prompt_embeddings(pipe, prompt, negative, guidance)

    def starting_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def pipeline_class(self) -> Any:
        return StableDiffusionPipeline

    def pipeline(self) -> Any:
        return self.pipeline_class()(
            vae=self.vae,
            text_encoder=self.text_encoders[0],
            tokenizer=self.tokenizers[0],
            unet=self.unet,
            scheduler=self.inference_scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )

    def trainable_text_encoders(self) -> dict[str, Any]:
        return {"text_encoder": self.text_encoders[0]}
