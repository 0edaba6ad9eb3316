"""SDXL: two text encoders (penultimate states concatenated), a pooled embedding, size/crop time ids.

Everything else (the VAE, the DDPM objective, LoRA targets, sampling hooks) is SD's: SDXL is SD
with these differences, so it extends :class:`~boothkit.families.sd.SD` rather than copying it.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline

from boothkit.families.base import Conditioning, FamilyName, ModelSource, PredictionType
from boothkit.families.sd import SD


class SDXL(SD):
    embedding_keys = ("clip_l", "clip_g")

    def __init__(
        self,
        name: FamilyName,
        source: ModelSource,
        components: dict[str, Any],
        noise_scheduler: Any,
        prediction_type: PredictionType,
    ) -> None:
        super().__init__(name, source, components, noise_scheduler, prediction_type)
        self.text_encoders = [components["text_encoder"], components["text_encoder_2"]]
        self.tokenizers = [components["tokenizer"], components["tokenizer_2"]]

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        # As StableDiffusionXLPipeline.encode_prompt: penultimate hidden states of both encoders,
        # concatenated on the feature axis; the pooled embedding is the second encoder's projection.
        states = []
        pooled = None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders, strict=True):
            ids = tokenizer(
                prompts,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(encoder.device)
            out = encoder(ids, output_hidden_states=True)
            pooled = out[0]  # (B, P) for CLIPTextModelWithProjection: text_embeds
            states.append(out.hidden_states[-2])  # (B, L, D_i)
        return Conditioning(torch.cat(states, dim=-1), pooled)

    def time_ids(
        self, original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]
    ) -> torch.Tensor:
        # (h, w) of the photo before resizing, (top, left) of the crop, (h, w) trained at.
        return torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32)

    def predict(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning, time_ids: torch.Tensor
    ) -> torch.Tensor:
        assert cond.pooled is not None, "SDXL conditioning needs the pooled embedding"
        added = {"text_embeds": cond.pooled, "time_ids": time_ids.to(noisy_latents.device, cond.pooled.dtype)}
        return self.unet(
            noisy_latents,
            timesteps,
            encoder_hidden_states=cond.hidden_states,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]

    def pipeline_class(self) -> Any:
        return StableDiffusionXLPipeline

    def pipeline(self) -> Any:
        return self.pipeline_class()(
            vae=self.vae,
            text_encoder=self.text_encoders[0],
            text_encoder_2=self.text_encoders[1],
            tokenizer=self.tokenizers[0],
            tokenizer_2=self.tokenizers[1],
            unet=self.unet,
            scheduler=self.inference_scheduler,
        )

    def trainable_text_encoders(self) -> dict[str, Any]:
        return {"text_encoder": self.text_encoders[0], "text_encoder_2": self.text_encoders[1]}
