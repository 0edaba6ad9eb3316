"""What a run shows a person: validation grids, per-step scalars (JSONL, TensorBoard), the loss
curve, the closing summary and summary.json."""

from __future__ import annotations

import json
import math
import shlex
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from boothkit.config import TrainConfig
from boothkit.families import Family
from boothkit.files import CONFIG_FILE, LOGS_DIR, LOSS_PLOT, SAMPLES_DIR, SUMMARY_FILE, TRAIN_LOG
from boothkit.grids import labelled_grid
from boothkit.io import atomic_save_image, atomic_write_json, atomic_write_text
from boothkit.methods import get_method
from boothkit.run import Run, TrainResult
from boothkit.templates import render_prompt


def _half(model: Family) -> torch.dtype:
    """The dtype sampling autocasts to: the frozen weights' (bf16/fp16), while the VAE (and a fully
    trained denoiser) stay fp32."""
    dtypes = {model.denoiser.dtype, *(e.dtype for e in model.text_encoders)} - {torch.float32}
    return next(iter(dtypes), torch.float32)


@torch.no_grad()
def encode_sample_prompts(model: Family, prompts: list[str]) -> dict[str, dict[str, Any]]:
    """The validation prompts encoded once, as the pipeline's call arguments, so sampling during
    training needs no text encoder (and the encoders can leave the accelerator)."""
    pipe = model.pipeline()
    half = _half(model)
    with torch.autocast(model.denoiser.device.type, dtype=half, enabled=half != torch.float32):
        return {
            p: model.prompt_embeddings(pipe, p, "", model.default_guidance) for p in dict.fromkeys(prompts)
        }


@torch.no_grad()
def sample_images(
    model: Family,
    prompts: list[str],
    seeds: list[int],
    resolution: int,
    steps: int,
    encoded: Mapping[str, dict[str, Any]] | None = None,
) -> list[list[Any]]:
    """Rows of images: one row per prompt, one column per seed, fixed generators. A prompt in
    ``encoded`` (:func:`encode_sample_prompts`) is not encoded again."""
    pipe = model.pipeline()
    pipe.set_progress_bar_config(disable=True)
    rows = []
    half = _half(model)
    for prompt in prompts:
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        given = (encoded or {}).get(prompt)
        text: dict[str, Any] = (
            {"prompt": [prompt] * len(seeds)}
            if given is None
            else {k: torch.cat([v] * len(seeds)) for k, v in given.items()}
        )
        with torch.autocast(model.denoiser.device.type, dtype=half, enabled=half != torch.float32):
            result = pipe(
                **text,
                num_inference_steps=steps,
                height=resolution,
                width=resolution,
                generator=generators,
            )
        rows.append(list(result.images))
    return rows


def save_samples(
    model: Family,
    config: TrainConfig,
    resolution: int,
    path: Path,
    step: int,
    token: str | None = None,
    encoded: Mapping[str, dict[str, Any]] | None = None,
) -> Path:
    was_training = model.denoiser.training
    model.denoiser.eval()
    prompts = [
        render_prompt(p, token=token or config.token, class_noun=config.class_noun)
        for p in config.sample_prompts
    ]
    rows = sample_images(model, prompts, list(config.sample_seeds), resolution, config.sample_steps, encoded)
    grid = labelled_grid(
        rows, row_labels=prompts, col_labels=[f"seed {s}" for s in config.sample_seeds], title=f"step {step}"
    )
    model.denoiser.train(was_training)
    return atomic_save_image(grid, path)


def smoothing_window(n: int) -> int:
    """How many steps a running mean of an n-step loss curve averages: a twentieth of the run, at
    least 10 steps (all of a shorter run)."""
    return max(1, min(n, max(10, n // 20)))


def running_mean(values: Sequence[float], k: int) -> list[float]:
    """Mean of each value and the k - 1 before it (fewer at the start): the trend through the
    per-step noise of a diffusion loss."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= k:
            total -= values[i - k]
        out.append(total / min(i + 1, k))
    return out


class RunLogger:
    """Scalars to a JSONL file and TensorBoard; the loss curve at the end."""

    def __init__(self, out: Path, *, truncate_after: int = 0) -> None:
        (out / LOGS_DIR).mkdir(parents=True, exist_ok=True)
        self.path = out / LOGS_DIR / TRAIN_LOG
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
        self.tb = SummaryWriter(str(out / LOGS_DIR / "tensorboard"))

    def scalars(self, step: int, **values: float | None) -> None:
        """One row of ``train.jsonl``; a non-finite value is written as null (JSON has no NaN) and
        named in the row's ``nonfinite``."""
        row: dict[str, Any] = {"step": step, "time": round(time.time() - self.start, 3)}
        nonfinite = [k for k, v in values.items() if v is not None and not math.isfinite(v)]
        row.update({k: (None if k in nonfinite else v) for k, v in values.items() if v is not None})
        if nonfinite:
            row["nonfinite"] = nonfinite
        self.history.append(row)
        self.file.write(json.dumps(row, allow_nan=False) + "\n")
        self.file.flush()
        for k, v in values.items():
            if v is not None and math.isfinite(v):
                self.tb.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()
            self.tb.close()

    def series(self, name: str) -> list[tuple[int, float]]:
        """(step, value) of one logged scalar, finite values only."""
        return [
            (r["step"], r[name]) for r in self.history if r.get(name) is not None and math.isfinite(r[name])
        ]

    def final_loss(self) -> tuple[float, int]:
        """(the loss averaged over the run's last steps, how many steps): a last step alone is noise."""
        losses = [v for _, v in self.series("loss")]
        if not losses:
            return math.nan, 0
        k = min(len(losses), smoothing_window(len(losses)))
        return sum(losses[-k:]) / k, k

    def plot(self, path: Path) -> Path:
        """The loss curve: each step's loss faint, its running mean over it, and the instance and
        prior terms' running means when the run has a prior; log scale, the legend outside the plot."""
        fig = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        raw = self.series("loss")
        if not raw:
            ax.text(0.5, 0.5, "no finite loss was logged", ha="center", va="center", transform=ax.transAxes)
        else:
            k = smoothing_window(len(raw))
            steps, values = zip(*raw, strict=True)
            ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8, label="loss (each step)")
            ax.plot(
                steps,
                running_mean(values, k),
                color="tab:blue",
                linewidth=2,
                label=f"loss (mean of {k} steps)",
            )
            for name, color in (("instance_loss", "tab:green"), ("prior_loss", "tab:orange")):
                part = self.series(name)
                if part and self.series("prior_loss"):
                    x, y = zip(*part, strict=True)
                    label = f"{name.split('_')[0]} term (mean of {k} steps)"
                    ax.plot(x, running_mean(y, k), color=color, linewidth=1.2, linestyle="--", label=label)
            if min(values) > 0:
                ax.set_yscale("log")
                plain = FuncFormatter(lambda v, _: f"{v:.3g}")  # 0.3, not 3x10^-1
                ax.yaxis.set_major_formatter(plain)
                ax.yaxis.set_minor_formatter(plain)
            fig.legend(loc="outside lower center", ncols=2, frameon=False)
        ax.set_title("training loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="major", alpha=0.3)
        canvas.draw()
        image = Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")
        return atomic_save_image(image, path)


# ----------------------------------------------------------------------------- the end of a run


def write_summary(run: Run, result: TrainResult, skipped_steps: int, curve: Path) -> Path:
    """summary.json: what the run did and wrote; every path in it absolute."""

    def paths(items: Sequence[Path]) -> list[str]:
        return [str(Path(p).resolve()) for p in items]

    summary = {
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "class_image_seconds": round(result.class_image_seconds, 2),
        "final_loss": result.final_loss,
        "final_loss_steps": result.loss_window,
        "skipped_steps": skipped_steps,
        "family": run.model.name,
        "prediction_type": run.model.prediction_type,
        "resolution": run.resolution,
        "instance_images": paths(run.images),
        "class_images": len(run.prior_paths),
        "weights": paths(result.weights),
        "samples": paths(result.samples),
        "loss_curve": str(curve.resolve()),
        "warnings": run.warnings,
        "skipped_files": run.skipped,
    }
    return atomic_write_json(run.out / SUMMARY_FILE, summary)


def summary_text(result: TrainResult, config: TrainConfig, example_prompt: str | None = None) -> str:
    """What a finished run wrote, and a `boothkit generate` line to try it (``example_prompt`` or a generic one)."""
    method = get_method(config.method)
    token = method.identifier(config.token)
    prompt = example_prompt or f"a photo of {token} {config.class_noun or ''} wearing a wizard hat".replace(
        "  ", " "
    )
    q = shlex.quote
    models = (
        f"--model {q(str(result.output))}"
        if method.standalone
        else f"--model {q(config.model)} --lora {q(str(result.output))}"
    )
    training = result.seconds - result.class_image_seconds
    timing = (
        f"class images {result.class_image_seconds:.1f} s, training {training:.1f} s"
        if result.class_image_seconds
        else f"training {training:.1f} s"
    )
    loss = f"final loss {result.final_loss:.4f}" + (
        f" (mean of the last {result.loss_window} steps)" if result.loss_window > 1 else ""
    )
    lines = [
        "",
        f"done: {result.steps} steps in {result.seconds:.1f} s ({timing}), {loss}",
        f"  weights : {', '.join(str(p) for p in result.weights)}",
        f"  samples : {result.output / SAMPLES_DIR}",
        f"  loss    : {result.output / LOSS_PLOT}",
        f"  logs    : {result.output / LOGS_DIR} ({TRAIN_LOG}, tensorboard)",
        f"  config  : {result.output / CONFIG_FILE}",
        "generate with:",
        f"  boothkit generate {models} --prompt {q(prompt)} --seed 42",
    ]
    return "\n".join(lines)
