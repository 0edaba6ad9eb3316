"""`boothkit generate`: a base model plus any number of weighted adapters, seeded, with the
parameters in each PNG."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from PIL.PngImagePlugin import PngInfo
from tqdm.auto import tqdm

from boothkit.adapters import Adapter
from boothkit.errors import BoothkitError
from boothkit.io import atomic_save_image
from boothkit.pipelines import Sampler


def png_parameters(params: dict[str, Any]) -> Any:
    """PNG text chunks: A1111-style `parameters` (read by common UIs) and boothkit's own JSON."""
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
    guidance: float | None = None,
    width: int | None = None,
    height: int | None = None,
    scheduler: str | None = None,
    output: str | Path = "outputs",
    device: str = "cpu",
    allow_pickle: bool = False,
    model_config: str | None = None,
    progress: bool = False,
) -> list[Path]:
    """Generate `num_images` images (image k from seed + k) and save them with their parameters;
    with ``progress``, a bar over every image's denoising steps."""
    if num_images <= 0 or steps <= 0:
        raise BoothkitError("--num-images and --steps must be positive")
    adapters = adapters or []
    sampler = Sampler.open(
        model, scheduler=scheduler, device=device, allow_pickle=allow_pickle, model_config=model_config
    )
    pipe = sampler.use(adapters, prompt)
    width, height = sampler.size(width, height)
    guidance = sampler.guidance(guidance)
    out = Path(output).expanduser()
    first = next_image_number(out)
    paths = []
    bar = tqdm(total=num_images * steps, desc="generating", unit="step", disable=not progress)

    def advance(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        bar.update(1)
        return tensors

    for k in range(num_images):
        image = pipe(
            prompt,
            negative_prompt=negative or None,
            num_inference_steps=steps,
            guidance_scale=guidance,
            width=width,
            height=height,
            generator=torch.Generator("cpu").manual_seed(seed + k),
            callback_on_step_end=advance,
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
    bar.close()
    return paths


__all__ = ["generate", "next_image_number", "png_parameters"]
