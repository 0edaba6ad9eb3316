"""The single-file checkpoint layout (original Stable Diffusion / LDM / SGM key names), both ways.

A1111, ComfyUI and most model sites exchange Stable Diffusion models as one `.safetensors` with the
original training code's key names (`model.diffusion_model.input_blocks.4.1...`), not as diffusers
folders. `save_single_file` writes that layout from a diffusers pipeline. Its key mapping is the exact
inverse of diffusers' own single-file *loader* (`diffusers.loaders.single_file_utils`), so
`from_single_file` reads back bit-identical weights, and it is derived from the UNet config
(`layers_per_block`, block types) instead of hard-coded indices, so it holds for any depth of UNet.

`detect_single_file_family` tells SD1 / SD2 / SDXL apart from the header alone (key names and shapes),
without reading gigabytes of weights.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from boothkit import __version__
from boothkit.errors import BoothkitError
from boothkit.families import flux_layout
from boothkit.families.base import FamilyName, load_pipeline_folder
from boothkit.io import atomic_save_safetensors

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# Where each family's text encoder(s) live in the single file, and in which layout:
# "clip" is Hugging Face CLIP naming under `transformer.`, "openclip" is OpenCLIP naming (fused qkv).
TEXT_ENCODER_LAYOUT: dict[str, list[tuple[str, str, str]]] = {
    "sd1": [("text_encoder", "cond_stage_model.transformer.", "clip")],
    "sd2": [("text_encoder", "cond_stage_model.model.", "openclip")],
    "sdxl": [
        ("text_encoder", "conditioner.embedders.0.transformer.", "clip"),
        ("text_encoder_2", "conditioner.embedders.1.model.", "openclip"),
    ],
}

# Families whose single file holds the denoiser alone (the VAE and text encoders are loaded beside it).
DENOISER_ONLY: frozenset[str] = frozenset({"flux1"})

# SAI model-spec architecture names (as kohya sd-scripts writes them) for a full checkpoint.
MODELSPEC_ARCHITECTURE = {
    ("sd1", False): "stable-diffusion-v1",
    ("sd1", True): "stable-diffusion-v1",
    ("sd2", False): "stable-diffusion-v2-512",
    ("sd2", True): "stable-diffusion-v2-768-v",
    ("sdxl", False): "stable-diffusion-xl-v1-base",
    ("sdxl", True): "stable-diffusion-xl-v1-base",
}

# ----------------------------------------------------------------------------- UNet layout


_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_RESNET_FROM_LDM = {v: k for k, v in _RESNET_TO_LDM.items()}

_UNET_TOP_TO_LDM = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_TOP_FROM_LDM = {
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "input_blocks.0.0": "conv_in",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}


@dataclass(frozen=True)
class UNetLayout:
    """What the diffusers <-> LDM block renumbering depends on, read from a UNet config.

    LDM numbers the UNet's layers flat (`input_blocks.0..N`), diffusers nests them
    (`down_blocks.b.resnets.l`); converting needs the layers per block and which up blocks carry
    attention (that decides whether an upsampler is the block's 2nd or 3rd sub-module).
    """

    layers_per_block: int
    down_has_attention: tuple[bool, ...]
    up_has_attention: tuple[bool, ...]
    class_embedding: bool = False  # label_emb is the class embedding rather than SDXL's add_embedding

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> UNetLayout:
        lpb = config.get("layers_per_block", 2)
        if isinstance(lpb, (list, tuple)):
            if len(set(lpb)) != 1:
                raise BoothkitError(
                    f"the UNet has a different number of layers per block ({list(lpb)}), which the "
                    "single-file (LDM) layout cannot express"
                )
            lpb = lpb[0]
        down = tuple("CrossAttn" in t for t in config.get("down_block_types", ()))
        up = tuple("CrossAttn" in t for t in config.get("up_block_types", ()))
        return cls(int(lpb), down, up, config.get("class_embed_type") in ("timestep", "projection"))


# The layout of the SDXL base UNet (and every SDXL fine-tune), used when no config is at hand.
SDXL_LAYOUT = UNetLayout(2, (False, True, True), (True, True, False))


def _split_index(path: str, prefix: str) -> tuple[int, str] | None:
    """`("down_blocks.3.attentions.0.x", "down_blocks.")` -> (3, "attentions.0.x")."""
    if not path.startswith(prefix):
        return None
    head, _, rest = path[len(prefix) :].partition(".")
    return (int(head), rest) if head.isdigit() else None


def _rename_resnet(rest: str, table: Mapping[str, str]) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def unet_path_to_ldm(path: str, layout: UNetLayout) -> str | None:
    """A diffusers UNet parameter or module path -> its LDM/SGM name (None: not part of the layout).

    Works on module paths (`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`) as well as
    parameter names (`....to_q.weight`), so the same table serves checkpoints and LoRA names.
    """
    n = layout.layers_per_block + 1
    for top, ldm in _UNET_TOP_TO_LDM.items():
        if path == top or path.startswith(top + "."):
            return ldm + path[len(top) :]
    if (hit := _split_index(path, "down_blocks.")) is not None:
        b, rest = hit
        kind, _, rest = rest.partition(".")
        if (sub := _split_index(rest, "")) is None:
            return None
        layer, inner = sub
        if kind == "resnets":
            return _join(f"input_blocks.{1 + b * n + layer}.0", _rename_resnet(inner, _RESNET_TO_LDM))
        if kind == "attentions":
            return _join(f"input_blocks.{1 + b * n + layer}.1", inner)
        if kind == "downsamplers" and (inner == "conv" or inner.startswith("conv.")):
            return _join(f"input_blocks.{(b + 1) * n}.0.op", inner[len("conv.") :])
        return None
    if path.startswith("mid_block."):
        kind, _, rest = path[len("mid_block.") :].partition(".")
        if (sub := _split_index(rest, "")) is None:
            return None
        layer, inner = sub
        if kind == "resnets":
            return _join(f"middle_block.{2 * layer}", _rename_resnet(inner, _RESNET_TO_LDM))
        if kind == "attentions":
            return _join(f"middle_block.{2 * layer + 1}", inner)
        return None
    if (hit := _split_index(path, "up_blocks.")) is not None:
        b, rest = hit
        kind, _, rest = rest.partition(".")
        if (sub := _split_index(rest, "")) is None:
            return None
        layer, inner = sub
        if kind == "resnets":
            return _join(f"output_blocks.{b * n + layer}.0", _rename_resnet(inner, _RESNET_TO_LDM))
        if kind == "attentions":
            return _join(f"output_blocks.{b * n + layer}.1", inner)
        if kind == "upsamplers":
            slot = 2 if b < len(layout.up_has_attention) and layout.up_has_attention[b] else 1
            return _join(f"output_blocks.{b * n + n - 1}.{slot}", inner)
        return None
    return None


def unet_path_from_ldm(path: str, layout: UNetLayout) -> str | None:
    """Inverse of `unet_path_to_ldm` (None: the name is not an LDM UNet name)."""
    n = layout.layers_per_block + 1
    for ldm, top in _UNET_TOP_FROM_LDM.items():
        if path == ldm or path.startswith(ldm + "."):
            return top + path[len(ldm) :]
    for ldm in ("label_emb.0.0", "label_emb.0.2"):
        if path == ldm or path.startswith(ldm + "."):
            base = "class_embedding" if layout.class_embedding else "add_embedding"
            return f"{base}.linear_{1 if ldm.endswith('0.0') else 2}" + path[len(ldm) :]
    if (hit := _split_index(path, "input_blocks.")) is not None:
        i, rest = hit
        if (sub := _split_index(rest, "")) is None or i == 0:
            return None
        slot, inner = sub
        b, layer = divmod(i - 1, n)
        if layer == n - 1:  # the block's downsampler
            if slot == 0 and (inner == "op" or inner.startswith("op.")):
                return _join(f"down_blocks.{b}.downsamplers.0.conv", inner[len("op.") :])
            return None
        if slot == 0:
            return _join(f"down_blocks.{b}.resnets.{layer}", _rename_resnet(inner, _RESNET_FROM_LDM))
        if slot == 1:
            return _join(f"down_blocks.{b}.attentions.{layer}", inner)
        return None
    if (hit := _split_index(path, "middle_block.")) is not None:
        i, inner = hit
        if i % 2 == 0:
            return _join(f"mid_block.resnets.{i // 2}", _rename_resnet(inner, _RESNET_FROM_LDM))
        return _join(f"mid_block.attentions.{i // 2}", inner)
    if (hit := _split_index(path, "output_blocks.")) is not None:
        i, rest = hit
        if (sub := _split_index(rest, "")) is None:
            return None
        slot, inner = sub
        b, layer = divmod(i, n)
        has_attention = b < len(layout.up_has_attention) and layout.up_has_attention[b]
        if slot == 0:
            return _join(f"up_blocks.{b}.resnets.{layer}", _rename_resnet(inner, _RESNET_FROM_LDM))
        if slot == 1 and has_attention:
            return _join(f"up_blocks.{b}.attentions.{layer}", inner)
        if (slot == 2 and has_attention) or (slot == 1 and not has_attention):
            return _join(f"up_blocks.{b}.upsamplers.0", inner)
        return None
    return None


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Diffusers UNet weights -> LDM names (without the `model.diffusion_model.` prefix)."""
    layout = UNetLayout.from_config(config)
    out: dict[str, torch.Tensor] = {}
    missing = []
    for key, value in state_dict.items():
        ldm = unet_path_to_ldm(key, layout)
        if ldm is None:
            missing.append(key)
        else:
            out[ldm] = value
    if missing:
        raise BoothkitError(
            f"{len(missing)} UNet weights have no place in the single-file layout (first: {missing[0]})",
            hint="only Stable Diffusion 1.x / 2.x / SDXL UNets can be saved as single files",
        )
    return out


# ----------------------------------------------------------------------------- VAE

_VAE_TOP = {
    "conv_norm_out": "norm_out",
}
_VAE_ATTENTION_TO_LDM = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _vae_key_to_ldm(key: str, num_up_blocks: int) -> str | None:
    coder, _, rest = key.partition(".")
    if coder not in ("encoder", "decoder"):
        return key if key.split(".")[0] in ("quant_conv", "post_quant_conv") else None
    for old, new in _VAE_TOP.items():
        if rest.startswith(old + "."):
            return f"{coder}.{new}{rest[len(old) :]}"
    if rest.startswith(("conv_in.", "conv_out.")):
        return key
    if (hit := _split_index(rest, "down_blocks.")) is not None:
        b, inner = hit
        if inner.startswith("resnets."):
            return f"{coder}.down.{b}.block.{inner[len('resnets.') :]}".replace(
                "conv_shortcut", "nin_shortcut"
            )
        if inner.startswith("downsamplers.0."):
            return f"{coder}.down.{b}.downsample.{inner[len('downsamplers.0.') :]}"
        return None
    if (hit := _split_index(rest, "up_blocks.")) is not None:
        b, inner = hit
        ldm_b = num_up_blocks - 1 - b  # LDM numbers decoder blocks from the lowest resolution
        if inner.startswith("resnets."):
            return f"{coder}.up.{ldm_b}.block.{inner[len('resnets.') :]}".replace(
                "conv_shortcut", "nin_shortcut"
            )
        if inner.startswith("upsamplers.0."):
            return f"{coder}.up.{ldm_b}.upsample.{inner[len('upsamplers.0.') :]}"
        return None
    if rest.startswith("mid_block.resnets."):
        layer, _, inner = rest[len("mid_block.resnets.") :].partition(".")
        return f"{coder}.mid.block_{int(layer) + 1}.{inner}".replace("conv_shortcut", "nin_shortcut")
    if rest.startswith("mid_block.attentions.0."):
        inner = rest[len("mid_block.attentions.0.") :]
        for old, new in _VAE_ATTENTION_TO_LDM.items():
            if inner.startswith(old + "."):
                return f"{coder}.mid.attn_1.{new}{inner[len(old) :]}"
    return None


def vae_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Diffusers AutoencoderKL weights -> LDM names (without `first_stage_model.`).

    The mid-block attention projections are 1x1 convolutions in LDM, linear layers in diffusers;
    they are written 4-D, as the original checkpoints hold them and A1111 / ComfyUI expect.
    """
    num_up = len(config.get("up_block_types", ()))
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        ldm = _vae_key_to_ldm(key, num_up)
        if ldm is None:
            raise BoothkitError(f"VAE weight {key!r} has no place in the single-file layout")
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[ldm] = value
    return out


# ----------------------------------------------------------------------------- text encoders


def _hf_clip_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Text-encoder weights with `text_model.` in front, however transformers nests the model.

    transformers >= 5.6 flattened `CLIPTextModel` (no `text_model.` level); the single-file layout
    and every older tool keep it, as does `CLIPTextModelWithProjection`.
    """
    out = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue  # a buffer, not a weight
        if key.startswith("text_model.") or key.startswith("text_projection."):
            out[key] = value
        else:
            out["text_model." + key] = value
    return out


def clip_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF CLIP text encoder -> the `text_model.*` layout under `...transformer.` (SD1, SDXL's first encoder)."""
    return {k: v for k, v in _hf_clip_keys(state_dict).items() if not k.startswith("text_projection")}


_OPENCLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_OPENCLIP_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
_LAYER_RE = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)$")


def openclip_to_ldm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF CLIP text encoder -> OpenCLIP names (SD2's encoder, SDXL's second): q/k/v fused into
    `attn.in_proj_*`, and `text_projection` stored transposed (OpenCLIP multiplies `x @ proj`)."""
    sd = _hf_clip_keys(state_dict)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key in _OPENCLIP_TOP:
            out[_OPENCLIP_TOP[key]] = value
            continue
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
            continue
        m = _LAYER_RE.match(key)
        if m is None:
            raise BoothkitError(f"text-encoder weight {key!r} has no place in the OpenCLIP layout")
        layer, rest = m.groups()
        proj = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)
        if proj:
            qkv.setdefault((layer, proj.group(2)), {})[proj.group(1)] = value
            continue
        for old, new in _OPENCLIP_LAYER.items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old) :]
                break
        else:
            raise BoothkitError(f"text-encoder weight {key!r} has no place in the OpenCLIP layout")
        out[f"transformer.resblocks.{layer}.{rest}"] = value
    for (layer, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise BoothkitError(f"text-encoder layer {layer} lacks one of q/k/v_proj.{kind}")
        fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = fused
    return out


# ----------------------------------------------------------------------------- whole pipelines


def pipeline_family(pipe: Any) -> FamilyName:
    """SD1 / SD2 / SDXL / Flux.1 of a loaded pipeline, from its components (not its name)."""
    if type(getattr(pipe, "transformer", None)).__name__ == "FluxTransformer2DModel":
        return "flux1"
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    config = pipe.unet.config
    if config.get("use_linear_projection") or config.get("cross_attention_dim") == 1024:
        return "sd2"
    return "sd1"


def pipeline_to_ldm(pipe: Any) -> dict[str, torch.Tensor]:
    """All of a pipeline's weights under their single-file names (for Flux.1, the transformer alone
    under BFL's names: the file ComfyUI's and Forge's diffusion-model loaders read, beside the
    VAE and text encoders people already have)."""
    family = pipeline_family(pipe)
    if family == "flux1":
        tensors, unmapped = flux_layout.to_bfl(pipe.transformer.state_dict())
        if unmapped:
            raise BoothkitError(
                f"{len(unmapped)} of the Flux.1 transformer's weights have no place in BFL's layout (first: {unmapped[0]})"
            )
        return tensors
    out: dict[str, torch.Tensor] = {}
    for key, value in unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config).items():
        out[UNET_PREFIX + key] = value
    for key, value in vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config).items():
        out[VAE_PREFIX + key] = value
    for component, prefix, layout in TEXT_ENCODER_LAYOUT[family]:
        encoder = getattr(pipe, component, None)
        if encoder is None:
            raise BoothkitError(
                f"the {family} pipeline has no {component}; a single-file checkpoint needs one"
            )
        convert = clip_to_ldm if layout == "clip" else openclip_to_ldm
        for key, value in convert(encoder.state_dict()).items():
            out[prefix + key] = value
    if family == "sdxl" and pipe.scheduler.config.get("prediction_type") == "v_prediction":
        out["v_pred"] = torch.tensor([])  # ComfyUI's marker for v-prediction SDXL checkpoints
    return out


def default_metadata(pipe: Any) -> dict[str, str]:
    """The model-spec keys A1111 / ComfyUI / civitai read from a checkpoint's header."""
    family = pipeline_family(pipe)
    if family == "flux1":
        dev = bool(pipe.transformer.config.guidance_embeds)
        return {
            "format": "pt",
            "modelspec.sai_model_spec": "1.0.0",
            "modelspec.architecture": "flux-1-dev" if dev else "flux-1-schnell",
            "modelspec.implementation": "https://github.com/black-forest-labs/flux",
            "modelspec.resolution": "1024x1024",
            "boothkit_family": family,
            "boothkit_version": __version__,
        }
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    size = int(pipe.unet.config.sample_size) * (2 ** (len(pipe.vae.config.block_out_channels) - 1))
    return {
        "format": "pt",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": MODELSPEC_ARCHITECTURE[(family, prediction == "v_prediction")],
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.resolution": f"{size}x{size}",
        "modelspec.prediction_type": "v" if prediction == "v_prediction" else "epsilon",
        "boothkit_family": family,
        "boothkit_version": __version__,
    }


def save_single_file(
    pipeline_dir_or_pipe: str | Path | Any,
    out_path: Path,
    *,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a diffusers SD1 / SD2 / SDXL pipeline as one single-file `.safetensors` checkpoint (a
    Flux.1 pipeline as its transformer in BFL's layout).

    `dtype` (e.g. torch.float16) casts floating-point weights, halving the file for sharing.
    `metadata` is merged over boothkit's model-spec defaults. The file appears atomically: a
    crash leaves either the previous file or none, never a truncated checkpoint.
    """
    pipe = (
        load_pipeline_folder(pipeline_dir_or_pipe)
        if isinstance(pipeline_dir_or_pipe, (str, Path))
        else pipeline_dir_or_pipe
    )
    tensors = pipeline_to_ldm(pipe)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    meta = {**default_metadata(pipe), **(metadata or {})}
    return atomic_save_safetensors(tensors, Path(out_path), {k: str(v) for k, v in meta.items()})


# ----------------------------------------------------------------------------- detection


def read_header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Key -> shape and the metadata of a `.safetensors`, reading only its header.

    A malformed or truncated file raises BoothkitError naming it instead of a loader crash.
    """
    path = Path(path)
    if not path.is_file():
        raise BoothkitError(f"{path} does not exist or is not a file")
    try:
        with safe_open(str(path), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError, OverflowError) as e:
        raise BoothkitError(
            f"{path} is not a valid .safetensors file ({str(e).splitlines()[0][:200]})",
            hint="the file may be truncated or not a safetensors file at all; download or export it again",
        ) from None
    return shapes, meta


def _describe(keys: list[str]) -> str:
    if not keys:
        return "no tensors at all"
    prefixes = sorted({k.split(".")[0] for k in keys})
    return f"{len(keys)} tensors under {', '.join(prefixes[:6])}{', ...' if len(prefixes) > 6 else ''}"


def detect_single_file_family(path: Path) -> FamilyName:
    """Which family a single-file checkpoint is, from its header (key names and shapes) only.

    SDXL carries its second (OpenCLIP) text encoder under `conditioner.embedders.1`; SD2 has an
    OpenCLIP encoder under `cond_stage_model.model.` or linear (2-D) `proj_in` weights; the rest
    with LDM UNet keys is SD1. Anything else (a LoRA, a diffusers-layout file, an inpainting UNet)
    is refused with what was found.
    """
    path = Path(path)
    shapes, _ = read_header(path)
    keys = list(shapes)
    if any(k.startswith(("lora_unet_", "lora_te", "unet.", "text_encoder.")) for k in keys):
        raise BoothkitError(
            f"{path} is a LoRA, not a model checkpoint ({_describe(keys)})",
            hint="load the base model first and apply the LoRA to it",
        )
    if flux_layout.is_bfl_checkpoint(keys):
        return _flux_family(path, shapes)
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None:
        raise BoothkitError(
            f"{path} has no Stable Diffusion UNet weights (no {UNET_PREFIX}input_blocks.*; found {_describe(keys)})",
            hint="boothkit reads single-file SD 1.x / 2.x / SDXL checkpoints and Flux.1 transformers; "
            "pass a diffusers folder otherwise",
        )
    if len(conv_in) != 4 or conv_in[1] != 4:
        channels = conv_in[1] if len(conv_in) > 1 else "?"
        kind = {9: "an inpainting", 5: "a depth-to-image", 7: "an upscaler", 8: "an instruct-pix2pix"}.get(
            channels if isinstance(channels, int) else -1, "a non text-to-image"
        )
        raise BoothkitError(
            f"{path} is {kind} model: its UNet takes {channels} input channels, not 4",
            hint="boothkit trains text-to-image models; use the base (non-inpainting) checkpoint",
        )
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        raise BoothkitError(
            f"{path} is an SDXL refiner (one OpenCLIP encoder); boothkit trains SDXL base models"
        )
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    proj_in = [s for k, s in shapes.items() if k.startswith(UNET_PREFIX) and k.endswith(".proj_in.weight")]
    if proj_in and len(proj_in[0]) == 2:
        return "sd2"
    if any(k.startswith(UNET_PREFIX + "label_emb.") for k in keys):
        return "sdxl"
    return "sd1"


# A Flux transformer's input width (latent channels x its 2x2 patch, plus what a variant adds).
_FLUX_VARIANTS = {384: "a Flux.1 Fill (inpainting)", 128: "a Flux.1 Depth or Canny"}


def _flux_family(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> FamilyName:
    """A Flux.1 transformer in BFL's names (bare, or inside ComfyUI's ``model.diffusion_model.``)."""
    img_in = next(s for k, s in shapes.items() if k.removeprefix(flux_layout.COMFY_PREFIX) == "img_in.weight")
    if len(img_in) == 2 and img_in[1] in _FLUX_VARIANTS:
        raise BoothkitError(
            f"{path} is {_FLUX_VARIANTS[img_in[1]]} model: its transformer takes {img_in[1]} input "
            "channels, not the text-to-image model's 64",
            hint="boothkit trains text-to-image models; use FLUX.1-dev or FLUX.1-schnell",
        )
    return "flux1"


def is_flux_dev(path: Path) -> bool:
    """Whether a Flux.1 single file has the guidance input of the guidance-distilled dev model."""
    shapes, _ = read_header(path)
    return any(k.removeprefix(flux_layout.COMFY_PREFIX).startswith("guidance_in.") for k in shapes)
