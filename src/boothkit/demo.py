"""`boothkit demo`: the whole pipeline offline, in a couple of minutes on a laptop CPU.

It builds (once) a tiny SD-1-shaped model, checks the photos, makes class images, trains
DreamBooth-LoRA with prior preservation, and renders the subject in new contexts beside the base
model's output. The tiny model is randomly initialised, so the pictures show the mechanics (the
LoRA changes what the model draws for the token) rather than a convincing dog.
"""

from __future__ import annotations

import time
from pathlib import Path

from boothkit.errors import BoothkitError

DEMO_PROMPTS = (
    "a photo of sks dog",
    "a photo of sks dog in the snow",
    "a photo of sks dog on the beach",
    "a photo of a dog",
)


def find_demo_images() -> Path | None:
    """The DreamBooth dog photos from the shared dataset folder beside the checkout, if present."""
    here = Path(__file__).resolve()
    candidates = [Path.cwd() / "shared", Path.cwd().parent / "shared", *(p / "shared" for p in here.parents)]
    for root in candidates:
        folder = root / "datasets" / "dreambooth" / "dog"
        if folder.is_dir():
            return folder
    return None


def demo_model_dir() -> Path:
    from boothkit.prior import default_bank_root

    return default_bank_root().parent / "models" / "tiny-sd1"


def _free_output(base: Path) -> Path:
    if not base.exists() or not any(base.iterdir()):
        return base
    for i in range(1, 1000):
        candidate = base.with_name(f"{base.name}-{i}")
        if not candidate.exists():
            return candidate
    raise BoothkitError(f"no free output folder next to {base}")


def run_demo(
    output: str | Path = "runs/demo",
    *,
    images: str | Path | None = None,
    steps: int = 150,
    progress: bool = True,
) -> Path:
    from boothkit.config import TrainConfig
    from boothkit.data.images import check_folder
    from boothkit.generate import Adapter, load_pipeline
    from boothkit.grids import labelled_grid
    from boothkit.io import atomic_save_image
    from boothkit.tiny import build_tiny_pipeline
    from boothkit.train import summary_text, train

    started = time.time()
    photo_dir = Path(images) if images else find_demo_images()
    if photo_dir is None or not photo_dir.is_dir():
        raise BoothkitError(
            "demo photos not found (looked for shared/datasets/dreambooth/dog beside the checkout)",
            hint="pass --images with a folder of 3-20 photos",
        )
    out = _free_output(Path(output))
    print(f"[1/5] checking photos in {photo_dir}")
    print(check_folder(photo_dir, resolution=64).format())

    model_dir = demo_model_dir()
    if not (model_dir / "model_index.json").exists():
        print(f"[2/5] building the tiny demo model in {model_dir}")
        build_tiny_pipeline("sd1", model_dir)
    else:
        print(f"[2/5] using the tiny demo model in {model_dir}")

    print("[3/5] class images and training (DreamBooth-LoRA with prior preservation)")
    config = TrainConfig(
        model=str(model_dir),
        images=str(photo_dir),
        output=str(out),
        token="sks",
        class_noun="dog",
        resolution=64,
        steps=steps,
        lr=5e-3,
        rank=8,
        class_images=16,
        class_steps=10,
        class_batch_size=8,
        sample_every=max(1, steps // 3),
        sample_steps=10,
        sample_prompts=DEMO_PROMPTS[:2],
        sample_seeds=(0, 1),
        device="cpu",
        flip=True,
    )
    result = train(config, progress=progress)

    print("[4/5] base model vs personalised model on new prompts")
    import torch

    base = load_pipeline(config.model, [])
    tuned = load_pipeline(config.model, [Adapter(result.output / "pytorch_lora_weights.safetensors")])
    rows = []
    for pipe in (base, tuned):
        row = []
        for prompt in DEMO_PROMPTS:
            image = pipe(
                prompt,
                num_inference_steps=10,
                height=64,
                width=64,
                generator=torch.Generator().manual_seed(0),
            ).images[0]
            row.append(image)
        rows.append(row)
    grid = labelled_grid(
        rows,
        row_labels=["base model", "base + LoRA"],
        col_labels=list(DEMO_PROMPTS),
        title="boothkit demo: same seeds, same prompts",
        label_width=110,
    )
    grid_path = atomic_save_image(grid, result.output / "demo_grid.png")

    print(f"[5/5] done in {time.time() - started:.0f} s")
    print(summary_text(result, config))
    print(f"  demo grid : {grid_path}")
    return result.output
