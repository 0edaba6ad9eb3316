"""Loading a base model of any supported family: a hub id, a local diffusers folder or a single file.

The family is detected from the model's files (never from its name); the result is a `Family`.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import (
    DDPMScheduler,
    DiffusionPipeline,
    FluxTransformer2DModel,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import HFValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from boothkit.errors import BoothkitError
from boothkit.families import flux_layout
from boothkit.families.base import FAMILY_NAMES, Family, FamilyName, LoadOptions, ModelSource
from boothkit.families.flux import Flux
from boothkit.families.sd import SD
from boothkit.families.sdxl import SDXL
from boothkit.families.single_file import detect_single_file_family, is_flux_dev

SUPPORTED = (
    "Stable Diffusion 1.x and 2.x (StableDiffusionPipeline), SDXL (StableDiffusionXLPipeline) and "
    "Flux.1 dev / schnell (FluxPipeline)"
)

# Configs used for a single-file checkpoint when --model-config is not given (must be in the HF cache offline).
DEFAULT_SINGLE_FILE_CONFIGS: dict[str, str] = {
    "sd1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd2": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "flux1": "black-forest-labs/FLUX.1-dev",
}
FLUX_SCHNELL_CONFIG = "black-forest-labs/FLUX.1-schnell"  # for a Flux.1 file without a guidance input

# Only what a diffusers pipeline needs: configs, tokenizer files, safetensors weights (no pickles,
# no fp16 duplicates, no multi-GB single-file checkpoints at the repo root).
_HUB_ALLOW = ["model_index.json", "*/*.json", "*/*.txt", "*/*.safetensors"]
_HUB_IGNORE = ["*.fp16.safetensors", "*non_ema*", "*.ckpt", "*.bin", "*.pt", "*.pth", "*.msgpack", "*.onnx*"]

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}


def resolve_model(spec: str) -> Path:
    """A local path for `spec`: an existing file or folder, or a hub id fetched through the HF cache."""
    path = Path(spec).expanduser()
    if (
        path.is_dir()
        and not (path / "model_index.json").exists()
        and (path / "model" / "model_index.json").exists()
    ):
        return (path / "model").resolve()  # a boothkit full fine-tune run folder
    if path.exists():
        return path.resolve()
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith(".safetensors") or spec.count("/") > 1
    if looks_like_path or "/" not in spec:
        raise BoothkitError(
            f"model {spec!r} does not exist",
            hint="pass a local diffusers folder, a .safetensors file, or a hub id like stable-diffusion-v1-5/stable-diffusion-v1-5",
        )
    return _from_hub(spec)


def _from_hub(repo_id: str) -> Path:
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_ALLOW, ignore_patterns=_HUB_IGNORE))
    except HFValidationError:
        raise BoothkitError(f"model {repo_id!r} is neither an existing path nor a valid hub id") from None
    except Exception as e:  # LocalEntryNotFoundError, connection errors, 401/404 from the hub
        where = constants.HF_HUB_CACHE
        if offline:
            raise BoothkitError(
                f"model {repo_id!r} is not in the local Hugging Face cache ({where}) and HF_HUB_OFFLINE is set",
                hint=f"download it once with `hf download {repo_id}` on a connected machine, or pass a local folder",
            ) from None
        raise BoothkitError(
            f"could not fetch model {repo_id!r} from the hub ({type(e).__name__}: {str(e).splitlines()[0]})",
            hint="check the id and your connection, or pass a local diffusers folder or .safetensors file",
        ) from None


def fingerprint(path: Path) -> str:
    """A stable hash of a model's configs and weight files (names, sizes, first MiB).

    Cheap enough for multi-GB models, and it changes whenever the weights are replaced, which is
    what the class-image bank needs to never reuse images made by another model.
    """
    h = hashlib.sha256()
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    )
    for f in files:
        rel = f.name if path.is_file() else f.relative_to(path).as_posix()
        if f.suffix not in {".json", ".txt", ".safetensors"}:
            continue
        h.update(rel.encode())
        h.update(str(f.stat().st_size).encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BoothkitError(f"{path} is not valid JSON: {e}") from None


# The pipelines of the flow-matching families boothkit trains, and of those it knows but does not (yet).
FLOW_PIPELINES: dict[str, FamilyName] = {"FluxPipeline": "flux1"}
KNOWN_UNSUPPORTED = {
    "StableDiffusion3Pipeline": "SD 3.x",
    "ZImagePipeline": "Z-Image",
    "Flux2Pipeline": "Flux.2",
    "QwenImagePipeline": "Qwen-Image",
    "FluxKontextPipeline": "Flux.1 Kontext",
    "FluxFillPipeline": "Flux.1 Fill",
}


def detect_family(folder: Path) -> tuple[FamilyName, str]:
    """Family and prediction type (epsilon, v_prediction, flow) of a diffusers folder, from its configs."""
    index = _read_json(folder / "model_index.json")
    if not index:
        found = sorted(p.name for p in folder.iterdir())[:8] if folder.is_dir() else []
        raise BoothkitError(
            f"{folder} is not a diffusers model folder (no model_index.json; found: {', '.join(found) or 'nothing'})",
            hint="pass a diffusers pipeline folder, a hub id, or a single-file .safetensors checkpoint",
        )
    pipeline = str(index.get("_class_name", "?"))
    if pipeline in FLOW_PIPELINES:
        transformer = _read_json(folder / "transformer" / "config.json")
        if transformer.get("in_channels", 64) != 4 * _read_json(folder / "vae" / "config.json").get(
            "latent_channels", 16
        ):
            raise BoothkitError(
                f"{folder}: its transformer takes {transformer.get('in_channels')} input channels, not the "
                "text-to-image model's (a Fill, Depth or Kontext model?)",
                hint=f"boothkit supports text-to-image {SUPPORTED}",
            )
        return FLOW_PIPELINES[pipeline], "flow"
    if pipeline in KNOWN_UNSUPPORTED:
        raise BoothkitError(
            f"{folder} holds a {KNOWN_UNSUPPORTED[pipeline]} model ({pipeline}), which boothkit does not train yet",
            hint=f"boothkit supports {SUPPORTED}",
        )
    unet = _read_json(folder / "unet" / "config.json")
    scheduler = _read_json(folder / "scheduler" / "scheduler_config.json")
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise BoothkitError(
            f"{folder}: prediction type {prediction!r} is not supported (epsilon or v_prediction)"
        )
    if not unet:
        raise BoothkitError(f"{folder} is a {pipeline} without a UNet; boothkit supports {SUPPORTED}")
    if unet.get("in_channels", 4) != 4:
        raise BoothkitError(
            f"{folder}: the UNet takes {unet.get('in_channels')} input channels (an inpainting or depth model?); "
            f"boothkit supports text-to-image {SUPPORTED}"
        )
    if pipeline == "StableDiffusionXLPipeline" or (
        unet.get("addition_embed_type") == "text_time" and "text_encoder_2" in index
    ):
        return "sdxl", prediction
    if pipeline == "StableDiffusionPipeline":
        sd2 = bool(unet.get("use_linear_projection")) or unet.get("cross_attention_dim") == 1024
        return ("sd2" if sd2 else "sd1"), prediction
    raise BoothkitError(f"{folder} holds a {pipeline}; boothkit supports {SUPPORTED}")


def load_model(spec: str, options: LoadOptions | None = None) -> Family:
    """Load a base model of any supported family, frozen, on `options.device` in `options.dtype`."""
    opts = options or LoadOptions()
    path = resolve_model(spec)
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            family, components, source = _load_pickle_checkpoint(spec, path, opts)
        elif path.suffix.lower() != ".safetensors":
            raise BoothkitError(f"{path} is not a model: expected a diffusers folder or a .safetensors file")
        else:
            check_safetensors(path)
            family, components, source = _load_single_file(spec, path, opts)
        prediction: str = (
            "flow"
            if family in FLOW_PIPELINES.values()
            else components["scheduler"].config.get("prediction_type", "epsilon")
        )
    else:
        family, prediction = detect_family(path)
        components = _load_folder(path, family, opts)
        source = ModelSource(spec=spec, path=path, fingerprint=fingerprint(path))
    if opts.prediction_type is not None:
        if prediction == "flow":
            raise BoothkitError(
                f"--prediction-type does not apply to {FAMILY_NAMES[family]}: it is trained with rectified flow",
                hint="drop --prediction-type",
            )
        prediction = opts.prediction_type
    return _assemble(family, source, components, prediction, opts)


def refuse_pickle(path: Path, allow: bool) -> None:
    if not allow:
        raise BoothkitError(
            f"{path} is a pickle file ({path.suffix}), which can run code when loaded; boothkit loads only .safetensors",
            hint="use the .safetensors version, or pass --allow-pickle to load it with torch.load(weights_only=True)",
        )


def torch_load_weights(path: Path) -> dict[str, torch.Tensor]:
    """torch.load restricted to tensors and plain containers: a pickle that carries code is refused."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as e:
        raise BoothkitError(
            f"{path} was refused: it holds something other than plain tensors ({str(e).splitlines()[0][:200]})",
            hint="only load checkpoints from sources you trust; prefer .safetensors",
        ) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise BoothkitError(f"{path} does not hold a state dict of tensors")
    return data


def check_safetensors(path: Path) -> None:
    """A malformed or truncated .safetensors gets a clear error instead of a crash deep in a loader."""
    try:
        with safe_open(str(path), "pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError) as e:
        raise BoothkitError(
            f"{path} is not a valid .safetensors file ({e})",
            hint="the download may be incomplete; fetch the file again",
        ) from None


def _load_pickle_checkpoint(
    spec: str, path: Path, opts: LoadOptions
) -> tuple[FamilyName, dict[str, Any], ModelSource]:
    refuse_pickle(path, opts.allow_pickle)
    state = torch_load_weights(path)
    with tempfile.TemporaryDirectory() as tmp:
        converted = Path(tmp) / (path.stem + ".safetensors")
        save_file({k: v.contiguous().clone() for k, v in state.items()}, str(converted))
        family, components, source = _load_single_file(spec, converted, opts)
    return family, components, ModelSource(spec, path, fingerprint(path), True, source.config_source)


def _load_folder(path: Path, family: FamilyName, opts: LoadOptions) -> dict[str, Any]:
    pickled = sorted(p for p in path.glob("*/*") if p.suffix in PICKLE_SUFFIXES)
    has_safetensors = any(path.glob("*/*.safetensors"))
    if pickled and not has_safetensors:
        refuse_pickle(pickled[0], opts.allow_pickle)
    try:
        pipe = DiffusionPipeline.from_pretrained(
            path,
            torch_dtype=opts.dtype,
            use_safetensors=None if (pickled and not has_safetensors) else True,
            local_files_only=True,
            safety_checker=None,
        )
    except (OSError, ValueError) as e:
        raise BoothkitError(
            f"could not load the diffusers model in {path}: {str(e).splitlines()[0]}"
        ) from None
    return dict(pipe.components)


def _load_single_file(
    spec: str, path: Path, opts: LoadOptions
) -> tuple[FamilyName, dict[str, Any], ModelSource]:
    family: FamilyName = detect_single_file_family(path)
    default = DEFAULT_SINGLE_FILE_CONFIGS[family]
    if family == "flux1" and not is_flux_dev(path):
        default = FLUX_SCHNELL_CONFIG
    config = _single_file_configs(path, family, opts.model_config or default)
    if family == "flux1":
        components = _load_flux_transformer_file(path, config, opts)
    else:
        cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
        try:
            pipe = cls.from_single_file(
                str(path), config=config, torch_dtype=opts.dtype, local_files_only=True
            )
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise BoothkitError(
                f"could not load single-file checkpoint {path} as {family} with configs from {config}: {str(e).splitlines()[0]}",
                hint="pass --model-config with the diffusers folder or hub id of the model this checkpoint was made from",
            ) from None
        components = dict(pipe.components)
        components.pop("safety_checker", None)
    source = ModelSource(
        spec=spec, path=path, fingerprint=fingerprint(path), single_file=True, config_source=config
    )
    return family, components, source


def _single_file_configs(path: Path, family: FamilyName, config: str) -> str:
    """Where a single file's configs (and, for a transformer-only file, its other components) come
    from: a local folder, or a hub id in the cache."""
    if Path(config).expanduser().exists():
        return str(Path(config).expanduser().resolve())
    if "/" in config:
        try:
            return str(_from_hub(config))
        except BoothkitError as e:
            raise BoothkitError(
                f"{path} is a single-file {FAMILY_NAMES[family]} checkpoint, and the configs to build it "
                f"from ({config}) could not be read: {e.message}",
                hint="pass --model-config with a local diffusers folder of the same family "
                "(e.g. the base model this checkpoint was made from)",
            ) from None
    return config


def _load_flux_transformer_file(path: Path, config: str, opts: LoadOptions) -> dict[str, Any]:
    """A Flux.1 transformer from BFL's single file (bf16 or fp8, bare or ComfyUI-prefixed), with
    the VAE, text encoders and scheduler of the diffusers folder ``config``."""
    folder = Path(config)
    transformer_config = _read_json(folder / "transformer" / "config.json")
    if not transformer_config or detect_family(folder)[0] != "flux1":
        raise BoothkitError(
            f"{path} is a Flux.1 transformer; --model-config {config} is not a Flux.1 diffusers folder",
            hint="pass --model-config with the FLUX.1-dev (or -schnell) diffusers folder or hub id",
        )
    with init_empty_weights():
        transformer = FluxTransformer2DModel.from_config(transformer_config)
    converted, unmapped = flux_layout.from_bfl(
        load_file(str(path)), flux_layout.FluxDims.from_config(transformer_config)
    )
    expected = transformer.state_dict()
    missing = [k for k in expected if k not in converted]
    misfit = [k for k, v in converted.items() if k in expected and v.shape != expected[k].shape]
    if unmapped or missing or misfit:
        first = (unmapped or missing or misfit)[0]
        guidance = bool(transformer_config.get("guidance_embeds")) != is_flux_dev(path)
        raise BoothkitError(
            f"{path} does not fit the Flux.1 transformer of {config}: {len(unmapped)} keys with no place, "
            f"{len(missing)} weights missing, {len(misfit)} of another shape (first: {first})"
            + ("; one is guidance-distilled (dev) and the other is not (schnell)" if guidance else ""),
            hint="pass --model-config with the diffusers folder of the model this file was made from",
        )
    transformer.load_state_dict({k: v.to(opts.dtype) for k, v in converted.items()}, assign=True)
    try:
        pipe = DiffusionPipeline.from_pretrained(
            folder, transformer=transformer, torch_dtype=opts.dtype, local_files_only=True
        )
    except (OSError, ValueError) as e:
        raise BoothkitError(
            f"could not load the diffusers model in {folder}: {str(e).splitlines()[0]}"
        ) from None
    return dict(pipe.components)


def _assemble(
    family: FamilyName,
    source: ModelSource,
    components: dict[str, Any],
    prediction: str,
    opts: LoadOptions,
) -> Family:
    for name in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2"):
        module = components.get(name)
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
            module.eval()
            module.to(opts.device)
    if family == "flux1":
        return Flux(family, source, components)
    # Training uses the DDPM forward process with the model's own beta schedule and prediction type.
    assert prediction in ("epsilon", "v_prediction")
    noise_scheduler = DDPMScheduler.from_config(components["scheduler"].config, prediction_type=prediction)
    if components["scheduler"].config.get("prediction_type") != prediction:
        components["scheduler"] = components["scheduler"].__class__.from_config(
            components["scheduler"].config, prediction_type=prediction
        )
    cls = SDXL if family == "sdxl" else SD
    return cls(family, source, components, noise_scheduler, prediction)  # type: ignore[arg-type]
