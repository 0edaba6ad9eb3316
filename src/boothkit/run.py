"""A training run's plain data: what the loop prepared (`Run`), what it returns (`TrainResult`), and
the run folder's marker, which says what state the run is in.

Everything here is data and small helpers on it; `preflight`, `guards`, `outputs` and `train` all
import it, and it imports none of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from boothkit import __version__
from boothkit.checkpoint import named_trainable
from boothkit.config import TrainConfig
from boothkit.data.cache import CachedImage
from boothkit.errors import BoothkitError
from boothkit.families import Conditioning, Family
from boothkit.files import RUN_MARKER
from boothkit.io import atomic_write_json
from boothkit.methods import TrainingMethod

COMPLETE = "complete"


@dataclass
class Run:
    """Everything the loop needs, prepared once."""

    config: TrainConfig
    out: Path
    model: Family
    method: TrainingMethod
    device: torch.device
    weight_dtype: torch.dtype
    accelerator: Any
    instances: list[CachedImage]
    priors: dict[tuple[int, int], list[CachedImage]]  # by (width, height)
    embeddings: dict[str, Conditioning]
    params: list[torch.nn.Parameter]
    optimizer: Any
    lr_scheduler: Any
    resolution: int
    images: list[Path]
    prior_paths: list[Path]
    warnings: list[str]
    class_image_seconds: float = 0.0

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        names = ["unet", *self.model.text_encoder_lora_prefixes()]
        return dict(zip(names, [self.model.unet, *self.model.text_encoders], strict=True))

    def trainable_state(self) -> dict[str, torch.Tensor]:
        state = {name: p.detach() for name, p in named_trainable(self.trainable_modules())}
        state.update({f"method.{k}": v for k, v in self.method.state().items()})
        return state


@dataclass
class TrainResult:
    output: Path
    weights: list[Path]
    steps: int
    seconds: float  # the whole run, class images included
    final_loss: float  # the mean over the last `loss_window` steps (`RunLogger.final_loss`)
    samples: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    class_image_seconds: float = 0.0  # making or checking the class images, before the first step
    loss_window: int = 1


# ----------------------------------------------------------------------------- the run folder's marker


def write_marker(folder: Path, status: str, **extra: Any) -> None:
    """Say what state the run in ``folder`` is in: running, interrupted, failed or complete."""
    atomic_write_json(folder / RUN_MARKER, {"status": status, "boothkit": __version__, **extra})


def run_status(folder: Path) -> str | None:
    """The status a run folder's marker records; None when there is no marker."""
    marker = folder / RUN_MARKER
    if not marker.exists():
        return None
    return str(json.loads(marker.read_text()).get("status"))


def prepare_output(folder: Path) -> None:
    """Create the run folder; refuse to write into someone else's non-empty folder or a finished run."""
    if folder.exists():
        if not folder.is_dir():
            raise BoothkitError(f"--output {folder} exists and is not a folder")
        if any(folder.iterdir()):
            status = run_status(folder)
            if status is None:
                raise BoothkitError(
                    f"--output {folder} is not empty and is not a boothkit run folder; nothing was written",
                    hint="choose a new or empty folder",
                )
            if status == COMPLETE:
                raise BoothkitError(
                    f"--output {folder} already holds a finished run; nothing was overwritten",
                    hint="choose another --output folder",
                )
    folder.mkdir(parents=True, exist_ok=True)
