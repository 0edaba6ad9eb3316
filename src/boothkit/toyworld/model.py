"""The toy base model: a tiny Stable Diffusion 1 that draws the toy world's captions.

The model has the real SD-1 architecture (AutoencoderKL, a cross-attention UNet2DConditionModel,
a CLIPTextModel and a CLIP BPE tokenizer), only small, and is written as an ordinary
StableDiffusionPipeline folder, so boothkit loads and fine-tunes it like any SD-1 checkpoint. The
VAE has scale factor 2: 48 px images, 24x24x4 latents.

This module holds what the rest of boothkit needs to know about it: its resolution and schedules,
building, loading and saving its components, sampling images from prompts, and prompt fidelity
(the share of generated images whose shape, colour, position and background the oracle reads as
the caption says). Training it is :mod:`boothkit.toyworld.pretrain`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from boothkit.toyworld.captions import held_out_scenes, tokenizer_corpus
from boothkit.toyworld.oracles import measure
from boothkit.toyworld.scene import Scene, caption
from boothkit.toyworld.settings import PretrainSettings

RESOLUTION = 48  # the oracles read 99% of 48 px renders right even at half resolution; 32 px: 58%
MAX_TOKENS = 32  # the longest caption is 19 tokens with its start and end markers
ATTRIBUTES = ("shape", "color", "position", "background")
SCHEDULES = ("sd", "zero-snr")


def shipped_model_dir() -> Path:
    """The model folder that ships with boothkit."""
    return Path(__file__).resolve().parent / "model"


# --------------------------------------------------------------------------- schedules


def noise_schedule(kind: str = "sd") -> dict[str, Any]:
    """The training noise schedule: Stable Diffusion's, or the same rescaled to zero terminal SNR.

    SD's last timestep keeps sqrt(alpha_bar) = 0.068 of the signal, and at 24x24 latents that is
    enough to read the layout: a linear probe finds the object's position and background in x_t
    at the first of 20 leading DDIM steps well above chance (bench/schedule_leak.py). A model
    trained so takes position and background from the noise rather than the caption, and sampling
    starts from pure noise, where they are random: it follows position words at chance. Zero
    terminal SNR leaves nothing to read at the last step, which needs the v target (epsilon is
    undefined there) and trailing spacing (sampling starts at t=999).
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule {kind!r}: choose one of {', '.join(SCHEDULES)}")
    schedule: dict[str, Any] = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "steps_offset": 1,
    }
    if kind == "zero-snr":
        schedule.update(
            rescale_betas_zero_snr=True,
            prediction_type="v_prediction",
            timestep_spacing="trailing",  # (steps_offset does not apply to trailing spacing)
        )
    return schedule


def sampling_scheduler(kind: str = "sd") -> Any:
    """The DDIM scheduler a toy model folder ships with."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**noise_schedule(kind), clip_sample=False, set_alpha_to_one=False)


# --------------------------------------------------------------------------- components


def build_components(settings: PretrainSettings, tokenizer_dir: Path) -> dict[str, Any]:
    """Freshly initialised components of the toy SD-1 pipeline (the tokenizer trained into ``tokenizer_dir``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from boothkit.tiny import train_tokenizer

    train_tokenizer(tokenizer_dir, tokenizer_corpus(), vocab_size=600)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), model_max_length=MAX_TOKENS)
    hidden = settings.text_width
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=MAX_TOKENS,
            projection_dim=hidden,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_act="quick_gelu",
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=RESOLUTION,
    )
    w = settings.width
    # Three levels (24, 12 and 6 latent pixels), cross-attention at the two coarser ones: attention
    # over the 24 x 24 pixels of the first would cost the most and draw the least.
    unet = UNet2DConditionModel(
        sample_size=RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(w, 2 * w, 3 * w),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=16,
        cross_attention_dim=hidden,
        attention_head_dim=4,  # diffusers reads this as the number of heads
    )
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "unet": unet,
        "scheduler": sampling_scheduler(settings.schedule),
    }


def assemble(components: dict[str, Any]) -> Any:
    """The StableDiffusionPipeline of ``components``, without a safety checker or progress bars."""
    from diffusers import StableDiffusionPipeline

    pipe: Any = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_model(components: dict[str, Any], output: Path, meta: dict[str, Any]) -> None:
    """Write the pipeline folder with fp16 weights, atomically, keeping the log written so far."""
    import shutil

    from boothkit.io import atomic_write_dir

    half = {
        k: (copy.deepcopy(v).to("cpu", torch.float16) if isinstance(v, torch.nn.Module) else v)
        for k, v in components.items()
    }
    log = output / "pretrain_log.txt"

    def write(tmp: Path) -> None:
        assemble(half).save_pretrained(tmp, safe_serialization=True)
        (tmp / "boothkit_toyworld.json").write_text(json.dumps(meta, indent=2) + "\n")
        if log.exists():
            shutil.copy2(log, tmp / "pretrain_log.txt")

    atomic_write_dir(output, write)


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def load_components(folder: str | Path) -> dict[str, Any]:
    """The trainable components of a toy model folder, in float32, to continue pretraining."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    root = Path(folder)
    return {
        "tokenizer": CLIPTokenizer.from_pretrained(str(root / "tokenizer")),
        "text_encoder": CLIPTextModel.from_pretrained(str(root / "text_encoder"), torch_dtype=torch.float32),
        "vae": load_vae(root),
        "unet": UNet2DConditionModel.from_pretrained(str(root / "unet"), torch_dtype=torch.float32),
        "scheduler": DDIMScheduler.from_pretrained(str(root / "scheduler")),
    }


def load_vae(path: str | Path) -> Any:
    """The AutoencoderKL of a toy model folder, or of a vae/ folder, in float32."""
    from diffusers import AutoencoderKL

    folder = Path(path)
    if (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    return AutoencoderKL.from_pretrained(str(folder), torch_dtype=torch.float32)


# --------------------------------------------------------------------------- tensors


def caption_ids(tokenizer: Any, texts: Sequence[str]) -> torch.Tensor:
    """Token ids (N, MAX_TOKENS), padded as the pipeline pads prompts."""
    return tokenizer(
        list(texts), padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids


def to_tensor(images: Sequence[Image.Image] | Sequence[np.ndarray]) -> torch.Tensor:
    """PIL images (or (H, W, 3) uint8 arrays) -> (N, 3, H, W) in [-1, 1]."""
    array = np.stack(
        [
            np.asarray(im.convert("RGB") if isinstance(im, Image.Image) else im, dtype=np.float32)
            for im in images
        ]
    )
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def to_images(batch: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) in [-1, 1] -> PIL images."""
    array = ((batch.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in array]


# --------------------------------------------------------------------------- sampling and prompt fidelity


@dataclass(frozen=True)
class Fidelity:
    """Prompt fidelity of a set of generated images: per attribute and all four together."""

    overall: float
    per_attribute: dict[str, float]
    n: int

    def format(self) -> str:
        parts = " ".join(f"{k}={v:.2f}" for k, v in self.per_attribute.items())
        return f"fidelity={self.overall:.3f} ({parts}, n={self.n})"


def prompt_fidelity(images: Sequence[Image.Image], scenes: Sequence[Scene]) -> Fidelity:
    """Share of images whose shape, colour, position and background all agree with their scene."""
    if len(images) != len(scenes) or not images:
        raise ValueError("prompt_fidelity needs as many scenes as images, at least one")
    hits = {a: 0 for a in ATTRIBUTES}
    joint = 0
    for image, scene in zip(images, scenes, strict=True):
        agrees = measure(image).agrees(scene)
        for a in ATTRIBUTES:
            hits[a] += bool(agrees.get(a, True))
        joint += all(agrees.get(a, True) for a in ATTRIBUTES)
    n = len(images)
    return Fidelity(joint / n, {a: hits[a] / n for a in ATTRIBUTES}, n)


def sample_toy_images(
    pipe: Any,
    prompts: Sequence[str],
    *,
    seed: int = 0,
    steps: int = 20,
    guidance: float = 5.0,
    batch_size: int = 32,
    resolution: int = RESOLUTION,
) -> list[Image.Image]:
    """Images for ``prompts`` from a toy-model pipeline, image i seeded by ``seed + i`` whatever the batching."""
    out: list[Image.Image] = []
    device = pipe.unet.device
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        generators = [torch.Generator(device).manual_seed(seed + start + i) for i in range(len(chunk))]
        result = pipe(
            chunk,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=resolution,
            width=resolution,
            generator=generators,
        )
        out.extend(result.images)
    return out


def evaluate_pipeline(
    pipe: Any, n: int = 56, *, steps: int = 20, guidance: float = 5.0, seed: int = 0
) -> Fidelity:
    """Prompt fidelity of ``pipe`` on ``n`` held-out captions."""
    scenes = held_out_scenes(n)
    images = sample_toy_images(pipe, [caption(s) for s in scenes], seed=seed, steps=steps, guidance=guidance)
    return prompt_fidelity(images, scenes)
