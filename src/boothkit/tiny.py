"""Tiny, randomly initialised Stable-Diffusion-shaped models built locally from configs.

Real weights can't be downloaded in an offline sandbox, so tests, the demo and the CPU benchmark use
these. They have the real architectures (AutoencoderKL, UNet2DConditionModel, CLIP text encoders,
a byte-level BPE CLIP tokenizer), only small, and are written as ordinary diffusers folders, so
everything downstream goes through the same loading code a real model would.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, get_args

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (  # type: ignore[attr-defined]  # T5TokenizerFast: T5Tokenizer's alias in 5.x
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from boothkit.families.base import FamilyName

TINY_FAMILIES: tuple[FamilyName, ...] = get_args(FamilyName)

_SPLIT_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)

# Words the tiny tokenizer learns as single tokens: enough for the tests' prompts and the demo's.
DEFAULT_CORPUS: tuple[str, ...] = (
    "a photo of sks dog",
    "a photo of sks cat",
    "a photo of a dog",
    "a photo of a cat",
    "a photo of a teapot",
    "a photo of a vase",
    "a photo of a bowl",
    "a photo of a toy",
    "a sks dog wearing a wizard hat",
    "a sks cat in the snow on the beach in the jungle",
    "a red cube on top of a blue table, painting, watercolor, oil",
    "a sks backpack in a city at night with a mountain in the background",
    "a photo of zwx person",
)


def train_tokenizer(out_dir: Path, corpus: Iterable[str] = DEFAULT_CORPUS, vocab_size: int = 1000) -> Path:
    """Train a CLIP-style byte-level BPE tokenizer (vocab.json + merges.txt) on `corpus`.

    The pre-tokenisation, normalisation and `</w>` word-end marker are CLIP's, so
    `transformers.CLIPTokenizer` loads the files as it would OpenAI's.
    """
    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    # Each character as a word of its own gives every `c</w>` a token, so no input maps to unk.
    singles = " ".join(chr(c) for c in range(ord("a"), ord("z") + 1)) + " 0 1 2 3 4 5 6 7 8 9 , . !"
    lines = [*corpus, singles] * 20
    tokenizer.train_from_iterator(lines, trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.model.save(str(out_dir))
    return out_dir


def _load_tokenizer(corpus: Iterable[str]):  # -> CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        train_tokenizer(Path(tmp), corpus)
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=77)


def _text_encoder_config(tokenizer, hidden: int = 32, projection: int = 32):
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=4,
        num_hidden_layers=3,
        max_position_embeddings=77,
        projection_dim=projection,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="quick_gelu",
    )


def _t5_tokenizer(corpus: Iterable[str]) -> T5TokenizerFast:
    """A T5-style tokenizer (SentencePiece-like unigram, lower-cased, ``</s>`` appended) trained on
    ``corpus``, built here so that nothing comes from a hub."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    tokenizer.train_from_iterator(list(corpus) * 20, trainer)
    eos = tokenizer.token_to_id("</s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    return T5TokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=512,
    )


def _vae(**scaling: float):
    # Three blocks: a scale factor of 4 (real SD: 8), so 32 px images give 8x8 latents.
    return AutoencoderKL(
        **scaling,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )


def _noise_schedule() -> dict[str, object]:
    # The Stable Diffusion training schedule.
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "steps_offset": 1,
    }


def build_tiny_pipeline(
    family: FamilyName,
    out_dir: str | Path,
    *,
    seed: int = 0,
    corpus: Iterable[str] = DEFAULT_CORPUS,
    distilled_guidance: bool = True,
) -> Path:
    """Write a tiny diffusers pipeline folder of the given family to `out_dir` and return its path.

    sd1: epsilon prediction, PNDM scheduler (as SD 1.5 ships); sd2: v-prediction, linear attention
    projections, Euler (as SD 2.1-768 ships); sdxl: two text encoders, pooled embedding and
    size/crop time ids, Euler; flux1: CLIP + T5, a Flux transformer, flow matching (Flux.1-dev's
    guidance embedding unless ``distilled_guidance=False``, as schnell).
    """
    out = Path(out_dir)
    corpus = tuple(corpus)
    scheduler: Any
    pipe: Any
    torch.manual_seed(seed)
    tokenizer = _load_tokenizer(corpus)
    vae = _vae()
    common_unet = {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": (32, 64),
        "norm_num_groups": 8,
    }
    if family in ("sd1", "sd2"):
        sd2 = family == "sd2"  # SD 2.x: linear attention projections, per-block heads, v-prediction
        text_encoder = CLIPTextModel(_text_encoder_config(tokenizer))
        unet = UNet2DConditionModel(
            **common_unet,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=(2, 4) if sd2 else 4,
            use_linear_projection=sd2,
        )
        scheduler = (
            EulerDiscreteScheduler(**_noise_schedule(), prediction_type="v_prediction")
            if sd2
            else PNDMScheduler(**_noise_schedule(), skip_prk_steps=True, set_alpha_to_one=False)
        )
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    elif family == "sdxl":
        text_encoder = CLIPTextModel(_text_encoder_config(tokenizer))
        tokenizer_2 = _load_tokenizer(corpus)
        # The second encoder is wider, as in real SDXL (768 vs 1280): single-file loaders tell the two
        # apart by width.
        text_encoder_2: Any = CLIPTextModelWithProjection(
            _text_encoder_config(tokenizer_2, hidden=48, projection=40)
        )
        time_dim = 8
        unet = UNet2DConditionModel(
            **common_unet,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32 + 48,  # the two encoders' hidden states, concatenated
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=6 * time_dim + 40,  # time ids + pooled projection
            transformer_layers_per_block=(1, 1),
        )
        scheduler = EulerDiscreteScheduler(**_noise_schedule())
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
        )
    elif family == "flux1":
        # Flux.1: CLIP (pooled) + T5 (states), a transformer on 2x2-packed 16-channel-wide tokens of
        # 4-channel latents, guidance-distilled like Flux.1-dev (schnell: distilled_guidance=False).
        text_encoder = CLIPTextModel(_text_encoder_config(tokenizer))
        tokenizer_2 = _t5_tokenizer(corpus)
        text_encoder_2 = T5EncoderModel(
            T5Config(
                vocab_size=len(tokenizer_2),
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                relative_attention_num_buckets=8,
                pad_token_id=tokenizer_2.pad_token_id,
                eos_token_id=tokenizer_2.eos_token_id,
            )
        )
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=distilled_guidance,
            axes_dims_rope=(4, 6, 6),
        )
        flux_vae = _vae(shift_factor=0.1159, scaling_factor=0.3611)  # Flux's VAE shifts, then scales
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15
        )
        pipe = FluxPipeline(
            scheduler=scheduler,
            vae=flux_vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
        )
    else:
        raise ValueError(f"unknown tiny family {family!r}; choose one of {TINY_FAMILIES}")
    pipe.save_pretrained(out, safe_serialization=True)
    (out / "boothkit_tiny.json").write_text(json.dumps({"family": family, "seed": seed}) + "\n")
    return out
