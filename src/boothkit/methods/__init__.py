"""Training methods behind one interface: which parameters train, and what a run saves.

The loop calls `setup` once (add adapters, mark what trains, return optimizer parameter groups)
and `save` for each checkpoint and at the end. A new method is one new file plus a registry line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from boothkit.config import TrainConfig
from boothkit.errors import BoothkitError
from boothkit.families import Family

__all__ = ["TrainingMethod", "get_method"]


class TrainingMethod(Protocol):
    name: str

    @property
    def trains_text_encoder(self) -> bool:
        """Whether prompt embeddings must be recomputed every step (no embedding cache)."""
        ...

    def setup(self, model: Family, config: TrainConfig) -> list[dict[str, Any]]:
        """Prepare the model for training; return optimizer parameter groups (params, lr)."""
        ...

    def save(self, model: Family, out_dir: Path, metadata: dict[str, str]) -> list[Path]:
        """Write what the method produces into `out_dir` (atomically); return the files written."""
        ...


def get_method(name: str) -> TrainingMethod:
    from boothkit.methods.lora import LoRA

    registry: dict[str, type] = {"lora": LoRA}
    if name not in registry:
        raise BoothkitError(f"unknown method {name!r}; available: {', '.join(sorted(registry))}")
    method: TrainingMethod = registry[name]()
    return method
