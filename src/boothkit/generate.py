"""Inference: a base model plus any number of weighted LoRAs, seeded, with parameters in each PNG."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from boothkit.errors import BoothkitError
from boothkit.families import (
    PICKLE_SUFFIXES,
    Family,
    LoadOptions,
    check_safetensors,
    load_model,
    refuse_pickle,
    torch_load_weights,
)

LORA_FILE = "pytorch_lora_weights.safetensors"
EMBEDDINGS_FILE = "learned_embeds.safetensors"
CHECKPOINT_WEIGHTS = "trainable.safetensors"  # in run/checkpoints/step-NNNNNN/

SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
}


@dataclass(frozen=True)
class Adapter:
    path: Path
    weight: float = 1.0


def split_weight(spec: str, flag: str = "--lora") -> tuple[str, float]:
    """`path[:weight]` -> (path, weight); a path that exists as written keeps any ':' it contains."""
    head, sep, tail = spec.rpartition(":")
    if not sep or not head or Path(spec).exists():
        return spec, 1.0
    try:
        return head, float(tail)
    except ValueError:
        raise BoothkitError(
            f"{flag} {spec!r}: weight {tail!r} is not a number", hint="write it as PATH:0.8"
        ) from None


def parse_adapter(spec: str, *, allow_pickle: bool = False) -> Adapter:
    """`run_dir`, a LoRA run's checkpoint folder (`run/checkpoints/step-000200`), `file.safetensors`,
    or any of them with `:weight` (e.g. `style.safetensors:0.5`)."""
    path_part, weight = split_weight(spec)
    path = Path(path_part).expanduser()
    if (path / CHECKPOINT_WEIGHTS).is_file() and not (path / LORA_FILE).exists():
        checkpoint_lora_state_dict(path)  # fail now, with a clear message, if it is not a LoRA run
        return Adapter(path / CHECKPOINT_WEIGHTS, weight)
    if path.is_dir():
        # A run folder: its LoRA (with the embeddings beside it for pivotal runs), or a textual-inversion run's embeddings.
        path = (
            path / LORA_FILE
            if (path / LORA_FILE).exists() or not (path / EMBEDDINGS_FILE).exists()
            else path / EMBEDDINGS_FILE
        )
    if not path.is_file():
        raise BoothkitError(
            f"--lora {spec!r}: {path} does not exist",
            hint="pass a boothkit run folder or a LoRA .safetensors file",
        )
    if path.suffix.lower() in PICKLE_SUFFIXES:
        refuse_pickle(path, allow_pickle)
    else:
        check_safetensors(path)
    return Adapter(path, weight)


def checkpoint_lora_state_dict(folder: Path) -> dict[str, Any]:
    """A training checkpoint's LoRA tensors in the layout `load_lora_weights` reads.

    Checkpoints store peft's parameter names (`unet.<module>.lora_A.default.weight`) and no
    adapter config; diffusers reads such tensors with alpha = rank (scale 1). So the adapter name
    is dropped and lora_B is multiplied by the run's alpha / rank, which gives the same update
    W + (alpha / rank) B A the run trained.
    """
    from safetensors.torch import load_file

    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        config = dict(manifest["config"])
    except (OSError, ValueError, KeyError, TypeError):
        raise BoothkitError(
            f"{folder} has no readable manifest.json, so its LoRA settings are unknown",
            hint="pass a complete checkpoint folder (run/checkpoints/step-NNNNNN) or a run folder",
        ) from None
    method = config.get("method", "lora")
    if method != "lora":
        raise BoothkitError(
            f"{folder} is a checkpoint of a {method!r} run; only LoRA checkpoints can be compared"
        )
    rank = float(config.get("rank") or 0)
    alpha = config.get("lora_alpha")
    scale = float(alpha) / rank if alpha is not None and rank else 1.0
    pattern = re.compile(r"^(?P<module>.+)\.(?P<which>lora_[AB])\.[^.]+\.weight$")
    out: dict[str, Any] = {}
    for key, tensor in load_file(folder / CHECKPOINT_WEIGHTS).items():
        m = pattern.match(key)
        if not m:
            continue
        value = tensor * scale if m["which"] == "lora_B" and scale != 1.0 else tensor
        out[f"{m['module']}.{m['which']}.weight"] = value
    if not out:
        raise BoothkitError(f"{folder / CHECKPOINT_WEIGHTS} holds no LoRA tensors")
    return out


def lora_source(adapter: Adapter) -> tuple[Any, dict[str, Any]]:
    """What `load_lora_weights` takes for this adapter: a folder + file name, or a state dict."""
    if adapter.path.name == CHECKPOINT_WEIGHTS:
        return checkpoint_lora_state_dict(adapter.path.parent), {}
    if adapter.path.suffix.lower() in PICKLE_SUFFIXES:  # parse_adapter allowed it: tensors only
        return torch_load_weights(adapter.path), {}
    return str(adapter.path.parent), {"weight_name": adapter.path.name}


def set_scheduler(pipe: Any, name: str | None) -> None:
    if name is None:
        return
    if name not in SCHEDULERS:
        raise BoothkitError(f"--scheduler {name!r} is not known; choose one of {', '.join(SCHEDULERS)}")
    import diffusers

    cls_name, kwargs = SCHEDULERS[name]
    pipe.scheduler = getattr(diffusers, cls_name).from_config(pipe.scheduler.config, **kwargs)


def is_embeddings_file(path: Path) -> bool:
    """Textual-inversion embeddings: boothkit's file name, or a file whose tensors are all (n, D) vectors
    under one token key or SDXL's clip_l/clip_g."""
    if path.name == EMBEDDINGS_FILE:
        return True
    if path.suffix.lower() != ".safetensors":
        return False
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    return bool(keys) and (set(keys) <= {"clip_l", "clip_g"} or (len(keys) == 1 and "lora" not in keys[0]))


def read_embeddings(path: Path) -> tuple[str, list[Any]]:
    """(the token a run's embeddings file learned, its vectors per text encoder as [n, dim] tensors):
    one tensor, or SDXL's two (``clip_l``, ``clip_g``)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    tensors = load_file(path)
    token = meta.get("boothkit_placeholder") or (next(iter(tensors)) if len(tensors) == 1 else None)
    if token is None:
        token = f"<{path.stem}>"
    if "clip_l" in tensors:
        vectors = [tensors["clip_l"], tensors["clip_g"]]
    else:
        vectors = [next(iter(tensors.values()))]
    return token, [v.reshape(-1, v.shape[-1]) for v in vectors]


def token_names(token: str, n: int) -> list[str]:
    """The tokenizer entries of an n-vector token, as diffusers' `load_textual_inversion` adds them."""
    return [token] + [f"{token}_{i}" for i in range(1, n)]


def load_embeddings(pipe: Any, path: Path) -> str:
    """Add learned token embeddings to the pipeline's tokenizer(s); returns the token to use in prompts."""
    token, vectors = read_embeddings(path)
    if token in pipe.tokenizer.get_vocab():
        raise BoothkitError(
            f"could not load embeddings {path}: the token {token} is already taken "
            "(by another --lora's embeddings, or a word of the base model)",
            hint="runs used together need different tokens: train one of them with another --token, e.g. --token zwx",
        )
    try:
        if len(vectors) == 2:  # SDXL: one set of vectors per text encoder
            if getattr(pipe, "text_encoder_2", None) is None:
                raise BoothkitError(
                    f"{path} holds SDXL embeddings (clip_l/clip_g) but the base model is not SDXL"
                )
            pipe.load_textual_inversion(
                vectors[0], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
            )
            pipe.load_textual_inversion(
                vectors[1], token=token, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2
            )
        else:
            pipe.load_textual_inversion(vectors[0], token=token)
    except (ValueError, RuntimeError) as e:
        raise BoothkitError(
            f"could not load embeddings {path} into this base model: {str(e).splitlines()[0]}",
            hint="embeddings fit only the model family they were trained for",
        ) from None
    return token


FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
_SS_FAMILIES = {"sd_v1": "sd1", "sd_v2": "sd2", "sd_v2_v": "sd2", "sdxl_base_v1-0": "sdxl"}


def adapter_metadata(path: Path) -> dict[str, str]:
    """A .safetensors adapter's metadata (what boothkit or kohya wrote about it); {} for other files
    and for training checkpoints, whose metadata describes no adapter."""
    if path.suffix.lower() != ".safetensors" or path.name == CHECKPOINT_WEIGHTS:
        return {}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def trained_family(path: Path) -> str | None:
    """The family a .safetensors adapter says it was trained for (boothkit or kohya metadata)."""
    meta = adapter_metadata(path)
    return meta.get("boothkit_family") or _SS_FAMILIES.get(meta.get("ss_base_model_version", ""))


def trained_token(meta: dict[str, str]) -> str | None:
    """The word a boothkit adapter's prompts must hold, from its metadata: its placeholder (``<sks>``,
    textual inversion and pivotal tuning) or its token (LoRA, full fine-tune); None for other files."""
    return meta.get("boothkit_placeholder") or meta.get("boothkit_token")


def missing_tokens(prompt: str, adapters: list[Adapter]) -> list[str]:
    """A note per boothkit adapter whose token the prompt does not name (the subject would not show)."""
    from boothkit.data.captions import names_token

    notes = []
    for adapter in adapters:
        token = trained_token(adapter_metadata(adapter.path))
        if token and not names_token(prompt, token):
            notes.append(
                f"the prompt does not name {token}, the token {adapter.path} was trained on: "
                f"without it the subject will not appear (e.g. 'a photo of {token} ...')"
            )
    return notes


def check_family(adapter: Path, base_family: str | None) -> None:
    trained = trained_family(adapter)
    if base_family and trained and trained != base_family:
        raise BoothkitError(
            f"{adapter} was trained for {FAMILY_NAMES.get(trained, trained)} ({trained}) but the base model is "
            f"{FAMILY_NAMES.get(base_family, base_family)} ({base_family})",
            hint=f"use it with a {FAMILY_NAMES.get(trained, trained)} base model, or train one for this model",
        )


def apply_adapters(pipe: Any, adapters: list[Adapter], family: str | None = None) -> None:
    """Load each LoRA as a named adapter (and a run's learned embeddings), activate all with their weights.

    `family` is the base model's; an adapter trained for another family is refused by name."""
    names, weights = [], []
    for i, adapter in enumerate(adapters):
        name = f"adapter_{i}"
        check_family(adapter.path, family)
        if is_embeddings_file(adapter.path):
            load_embeddings(pipe, adapter.path)
            continue
        if (adapter.path.parent / EMBEDDINGS_FILE).exists() and adapter.path.name == LORA_FILE:
            load_embeddings(pipe, adapter.path.parent / EMBEDDINGS_FILE)  # a pivotal-tuning run
        source, kwargs = lora_source(adapter)
        try:
            pipe.load_lora_weights(source, adapter_name=name, **kwargs)
        except (ValueError, RuntimeError, KeyError) as e:
            raise BoothkitError(
                f"could not apply LoRA {adapter.path} to this base model: {str(e).splitlines()[0]}",
                hint="a LoRA only fits the model family it was trained for (SD 1.x, SD 2.x or SDXL)",
            ) from None
        present = {n for listed in pipe.get_list_adapters().values() for n in listed}
        if name not in present:  # diffusers only warns when no key of the file matches the model
            raise BoothkitError(
                f"LoRA {adapter.path} has no layer that matches this {FAMILY_NAMES.get(family or '', 'base')} model",
                hint="a LoRA only fits the model family it was trained for (SD 1.x, SD 2.x or SDXL)",
            )
        names.append(name)
        weights.append(adapter.weight)
    if names:
        pipe.set_adapters(names, adapter_weights=weights)


def png_parameters(params: dict[str, Any]) -> Any:
    """PNG text chunks: A1111-style `parameters` (read by common UIs) and boothkit's own JSON."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    loras = ", ".join(f"{a['path']}:{a['weight']}" for a in params["adapters"])
    a1111 = (
        f"{params['prompt']}\nNegative prompt: {params['negative']}\n"
        f"Steps: {params['steps']}, Sampler: {params['scheduler']}, CFG scale: {params['guidance']}, "
        f"Seed: {params['seed']}, Size: {params['width']}x{params['height']}, Model: {params['model']}"
        + (f", Lora: {loras}" if loras else "")
    )
    info.add_text("parameters", a1111)
    info.add_text("boothkit", json.dumps(params, sort_keys=True))
    return info


def image_size(family: Family, width: int | None, height: int | None) -> tuple[int, int]:
    """(width, height): the model's default resolution where not given; each a positive multiple of
    8 (diffusers' pipelines refuse others) and of the VAE's downscaling factor."""
    import math

    size = family.default_resolution
    width, height = width or size, height or size
    step = math.lcm(8, family.vae_scale_factor)
    for flag, value in (("--width", width), ("--height", height)):
        if value <= 0 or value % step:
            near = max(step, round(value / step) * step)
            raise BoothkitError(
                f"{flag} {value} must be a positive multiple of {step} for this model", hint=f"try {near}"
            )
    return width, height


def load_pipeline(
    model: str | Family, adapters: list[Adapter], scheduler: str | None = None, device: str = "cpu"
) -> Any:
    family = model if not isinstance(model, str) else load_model(model, LoadOptions(device=device))
    pipe = family.pipeline()
    set_scheduler(pipe, scheduler)
    apply_adapters(pipe, adapters, family.name)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def next_image_number(folder: Path) -> int:
    """One past the highest ``NNNNN-...png`` number in ``folder``: images from an earlier call stay."""
    numbers = (
        [int(m.group(1)) for p in folder.glob("*.png") if (m := re.match(r"(\d{5,})-", p.name))]
        if folder.is_dir()
        else []
    )
    return max(numbers, default=-1) + 1


@torch.no_grad()
def generate(
    model: str,
    prompt: str,
    *,
    adapters: list[Adapter] | None = None,
    negative: str = "",
    seed: int = 0,
    num_images: int = 1,
    steps: int = 30,
    guidance: float = 7.5,
    width: int | None = None,
    height: int | None = None,
    scheduler: str | None = None,
    output: str | Path = "outputs",
    device: str = "cpu",
    allow_pickle: bool = False,
    model_config: str | None = None,
) -> list[Path]:
    """Generate `num_images` images (image k from seed + k) and save them with their parameters."""
    from boothkit.io import atomic_save_image

    if num_images <= 0 or steps <= 0:
        raise BoothkitError("--num-images and --steps must be positive")
    adapters = adapters or []
    family = load_model(model, LoadOptions(model_config, device=device, allow_pickle=allow_pickle))
    pipe = load_pipeline(family, adapters, scheduler, device)
    width, height = image_size(family, width, height)
    out = Path(output).expanduser()
    first = next_image_number(out)
    paths = []
    for k in range(num_images):
        image = pipe(
            prompt,
            negative_prompt=negative or None,
            num_inference_steps=steps,
            guidance_scale=guidance,
            width=width,
            height=height,
            generator=torch.Generator("cpu").manual_seed(seed + k),
        ).images[0]
        params = {
            "prompt": prompt,
            "negative": negative,
            "seed": seed + k,
            "steps": steps,
            "guidance": guidance,
            "width": width,
            "height": height,
            "scheduler": scheduler or type(pipe.scheduler).__name__,
            "model": model,
            "adapters": [{"path": str(a.path), "weight": a.weight} for a in adapters],
        }
        path = out / f"{first + k:05d}-seed{seed + k}.png"
        paths.append(atomic_save_image(image, path, pnginfo=png_parameters(params)))
    return paths


__all__ = ["SCHEDULERS", "Adapter", "apply_adapters", "generate", "load_pipeline", "parse_adapter"]
