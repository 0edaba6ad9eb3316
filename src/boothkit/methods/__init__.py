"""Training methods behind one interface: which parameters train, what happens around an
optimizer step, and what a run saves.

The loop calls `setup` once (add adapters or tokens, mark what trains, return optimizer parameter
groups), `before_update`/`after_update` around each optimizer step, `state`/`load_state` for
checkpoints, and `save` at the end. A new method is one new file plus a registry line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from boothkit.config import TrainConfig
from boothkit.errors import BoothkitError
from boothkit.families import Family

__all__ = ["METHODS", "TrainingMethod", "get_method"]


class TrainingMethod(Protocol):
    name: str

    @property
    def trains_text_encoder(self) -> bool:
        """Whether prompts must be encoded every step (no embedding cache): a text encoder or a token trains."""
        ...

    def setup(self, model: Family, config: TrainConfig) -> list[dict[str, Any]]:
        """Prepare the model for training; return optimizer parameter groups (params, lr)."""
        ...

    def prompt_token(self, token: str) -> str:
        """What `{token}` becomes in prompts (a new placeholder for textual inversion)."""
        ...

    def before_update(self, model: Family, step: int) -> None:
        """Called after backward, before the optimizer step (step counts from 0): e.g. drop the
        gradients of parameters whose phase is over."""
        ...

    def after_update(self, model: Family, step: int) -> None:
        """Called after the optimizer step: e.g. restore untouched embedding rows, update an EMA."""
        ...

    def state(self) -> dict[str, torch.Tensor]:
        """Extra tensors a checkpoint must hold to resume exactly (e.g. EMA weights)."""
        ...

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None: ...

    def save(self, model: Family, out_dir: Path, metadata: dict[str, str]) -> list[Path]:
        """Write what the method produces into `out_dir` (atomically); return the files written."""
        ...


def _registry() -> dict[str, type]:
    from boothkit.methods.full import FullFineTune
    from boothkit.methods.lora import LoRA
    from boothkit.methods.pivotal import Pivotal
    from boothkit.methods.textual_inversion import TextualInversion

    return {"lora": LoRA, "full": FullFineTune, "ti": TextualInversion, "pivotal": Pivotal}


METHODS = ("lora", "full", "ti", "pivotal")


def get_method(name: str) -> TrainingMethod:
    registry = _registry()
    if name not in registry:
        raise BoothkitError(f"unknown method {name!r}; available: {', '.join(sorted(registry))}")
    method: TrainingMethod = registry[name]()
    return method


def fp32_trainable(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """Mark params trainable and keep them in fp32 (master weights) even when the frozen rest is half."""
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params
