"""A training run's plain data: what the loop prepared (`Run`), what it returns (`TrainResult`), and
the run folder's marker, which says what state the run is in.

Everything here is data and small helpers on it; `preflight`, `guards`, `outputs` and `train` all
import it, and it imports none of them.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from boothkit import __version__
from boothkit.checkpoint import latest_checkpoint, named_trainable
from boothkit.config import TrainConfig, to_toml
from boothkit.data.cache import CachedImage
from boothkit.errors import BoothkitError, WriteError
from boothkit.families import Conditioning, Family
from boothkit.files import CONFIG_FILE, RUN_MARKER
from boothkit.io import atomic_write_json, atomic_write_text, environment_hint
from boothkit.locks import Lock
from boothkit.methods import TrainingMethod
from boothkit.objectives import Objective

COMPLETE = "complete"


@dataclass
class Run:
    """Everything the loop needs, prepared once."""

    config: TrainConfig
    out: Path
    model: Family
    objective: Objective
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
    skipped: list[str] = field(default_factory=list)  # files --skip-invalid left out, 'file: reason'
    # The validation prompts as pipeline arguments, when no text encoder trains (`encode_sample_prompts`).
    encoded_samples: dict[str, dict[str, Any]] = field(default_factory=dict)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {self.model.denoiser_name: self.model.denoiser, **self.model.trainable_text_encoders()}

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


# ----------------------------------------------------------------------------- the run folder and its marker


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The run marker of ``folder`` (None when there is none); a damaged one is named, not guessed at."""
    marker = folder / RUN_MARKER
    if not marker.exists():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise ValueError("no status")
        return data
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise BoothkitError(
            f"the run marker {marker} can't be read ({e}); boothkit did not write it this way",
            hint="if this is your run, restore the file from a backup, or move the folder aside and train anew",
        ) from None


def run_status(folder: Path) -> str | None:
    """The status a run folder's marker records; None when there is no marker."""
    marker = read_marker(folder)
    return None if marker is None else str(marker["status"])


def write_marker(folder: Path, status: str, **extra: Any) -> None:
    """Say what state the run in ``folder`` is in (running, interrupted, failed or complete), and add
    the change to the marker's history: when, by which process and command."""
    previous = read_marker(folder) or {}
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    change = {
        "status": status,
        "at": now,
        "pid": os.getpid(),
        "command": shlex.join(["boothkit", *sys.argv[1:]]),
    }
    history = [*previous.get("history", []), {**change, **extra}]
    atomic_write_json(
        folder / RUN_MARKER, {"status": status, "boothkit": __version__, **extra, "history": history}
    )


class RunFolder:
    """A run folder this process holds the lock of. Its marker changes only when work starts
    (:meth:`start`) and when the run ends (:meth:`stop`, :meth:`finish`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = False

    def start(self, config: TrainConfig) -> None:
        write_marker(self.path, "running")
        atomic_write_text(self.path / CONFIG_FILE, to_toml(config))
        self.started = True

    def stop(self, status: str, **extra: Any) -> None:
        write_marker(self.path, status, **extra)

    def finish(self) -> None:
        write_marker(self.path, COMPLETE)


def _refuse_occupied(folder: Path, *, resume: bool) -> None:
    """A fresh run needs an empty folder or none; a resume needs a run folder."""
    if folder.exists() and not folder.is_dir():
        raise BoothkitError(f"--output {folder} exists and is not a folder")
    if resume or not folder.exists() or not any(folder.iterdir()):
        return
    marker = read_marker(folder)
    if marker is None:
        raise BoothkitError(
            f"--output {folder} is not empty and is not a boothkit run folder; nothing was written",
            hint="choose a new or empty folder",
        )
    if marker["status"] == COMPLETE:
        raise BoothkitError(
            f"--output {folder} already holds a finished run; nothing was overwritten",
            hint="choose another --output folder (or continue that run with --resume and more --steps)",
        )
    has_checkpoint = latest_checkpoint(folder) is not None
    raise BoothkitError(
        f"--output {folder} holds an unfinished run ({marker['status']}); a new run would mix with it, so "
        "nothing was written",
        hint=f"continue it with: boothkit train --resume {folder}"
        if has_checkpoint
        else "it has no checkpoint to continue from: delete it, or choose another --output folder",
    )


@contextmanager
def open_run(folder: Path, *, resume: bool) -> Iterator[RunFolder]:
    """Lock ``folder`` for this process and check it can take the run; create it if needed.

    Until :meth:`RunFolder.start` nothing in the folder changes: if the run is refused or fails
    before then, the folder is left as it was, and one this call created is removed again.
    """
    with Lock(folder, "run folder"):
        _refuse_occupied(folder, resume=resume)
        created = [p for p in (folder, *folder.parents) if not p.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a read-only disk, a folder without write permission
            raise WriteError(
                f"could not create --output {folder} ({e.strerror or e})", hint=environment_hint(e)
            ) from None
        run = RunFolder(folder)
        try:
            yield run
        except BaseException:
            if not run.started:
                for path in created:  # deepest first; only what is still empty
                    with suppress(OSError):
                        path.rmdir()
            raise
