"""What a run shows a person: validation grids, per-step scalars (JSONL, TensorBoard), the loss
curve and the closing summary."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from boothkit.config import TrainConfig
from boothkit.families import Family
from boothkit.io import atomic_save_image, atomic_write_text

if TYPE_CHECKING:
    from boothkit.train import TrainResult


@torch.no_grad()
def sample_images(
    model: Family, prompts: list[str], seeds: list[int], resolution: int, steps: int
) -> list[list[Any]]:
    """Rows of images: one row per prompt, one column per seed, fixed generators."""
    pipe = model.pipeline()
    pipe.set_progress_bar_config(disable=True)
    rows = []
    # Frozen weights may be bf16/fp16 while the VAE (and a fully trained UNet) stay fp32.
    dtypes = {model.unet.dtype, *(e.dtype for e in model.text_encoders)} - {torch.float32}
    half = next(iter(dtypes), torch.float32)
    for prompt in prompts:
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        with torch.autocast(model.unet.device.type, dtype=half, enabled=half != torch.float32):
            result = pipe(
                [prompt] * len(seeds),
                num_inference_steps=steps,
                height=resolution,
                width=resolution,
                generator=generators,
            )
        rows.append(list(result.images))
    return rows


def save_samples(
    model: Family, config: TrainConfig, resolution: int, path: Path, step: int, token: str | None = None
) -> Path:
    from boothkit.data.captions import render_prompt
    from boothkit.grids import labelled_grid

    was_training = model.unet.training
    model.unet.eval()
    prompts = [
        render_prompt(p, token=token or config.token, class_noun=config.class_noun)
        for p in config.sample_prompts
    ]
    rows = sample_images(model, prompts, list(config.sample_seeds), resolution, config.sample_steps)
    grid = labelled_grid(
        rows, row_labels=prompts, col_labels=[f"seed {s}" for s in config.sample_seeds], title=f"step {step}"
    )
    model.unet.train(was_training)
    return atomic_save_image(grid, path)


class RunLogger:
    """Scalars to a JSONL file and TensorBoard; the loss curve at the end."""

    def __init__(self, out: Path, *, truncate_after: int = 0) -> None:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        self.path = out / "logs" / "train.jsonl"
        # On resume, rows logged after the checkpoint were undone: drop them so the log reads as one run.
        self.history: list[dict[str, Any]] = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash
                    continue
                if row.get("step", 0) <= truncate_after:
                    self.history.append(row)
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.history))
        self.file = self.path.open("a", encoding="utf-8")
        self.start = time.time()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb: Any = SummaryWriter(str(out / "logs" / "tensorboard"))
        except (
            ImportError
        ):  # pragma: no cover - tensorboard is a dependency, but keep logs working without it
            self.tb = None

    def scalars(self, step: int, **values: float | None) -> None:
        row = {"step": step, "time": round(time.time() - self.start, 3)}
        row.update({k: v for k, v in values.items() if v is not None})
        self.history.append(row)
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                if v is not None and math.isfinite(v):
                    self.tb.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()

    def plot(self, path: Path) -> Path:
        from boothkit.grids import line_plot

        series = {
            name: [(r["step"], r[name]) for r in self.history if name in r]
            for name in ("loss", "instance_loss", "prior_loss")
        }
        series = {k: v for k, v in series.items() if v}
        # A running mean makes the trend visible through the per-step noise of diffusion losses.
        if series.get("loss"):
            k = max(1, len(series["loss"]) // 20)
            vals = [v for _, v in series["loss"]]
            series["loss (mean)"] = [
                (
                    series["loss"][i][0],
                    sum(vals[max(0, i - k + 1) : i + 1]) / len(vals[max(0, i - k + 1) : i + 1]),
                )
                for i in range(len(vals))
            ]
        return atomic_save_image(line_plot(series, title="training loss", log_y=True), path)


def summary_text(result: TrainResult, config: TrainConfig, example_prompt: str | None = None) -> str:
    """What a finished run wrote, and a `boothkit generate` line to try it (``example_prompt`` or a generic one)."""
    from boothkit.methods.textual_inversion import placeholder_tokens

    # TI and pivotal runs are prompted with their placeholder ("<sks>"), not the bare token.
    token = config.token if config.method in ("lora", "full") else placeholder_tokens(config.token, 1)[0]
    prompt = example_prompt or f"a photo of {token} {config.class_noun or ''} wearing a wizard hat".replace(
        "  ", " "
    )
    # A full fine-tune is a model of its own; the other methods are adapters on the base model.
    models = (
        f"--model {result.output}"
        if config.method == "full"
        else f"--model {config.model} --lora {result.output}"
    )
    lines = [
        "",
        f"done: {result.steps} steps in {result.seconds:.1f} s, final loss {result.final_loss:.4f}",
        f"  weights : {', '.join(str(p) for p in result.weights)}",
        f"  samples : {result.output / 'samples'}",
        f"  loss    : {result.output / 'loss.png'}",
        f"  logs    : {result.output / 'logs'} (train.jsonl, tensorboard)",
        f"  config  : {result.output / 'config.toml'}",
        "generate with:",
        f'  boothkit generate {models} --prompt "{prompt}" --seed 42',
    ]
    return "\n".join(lines)
