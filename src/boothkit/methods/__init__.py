"""Training methods behind one interface (:class:`TrainingMethod`, in :mod:`boothkit.methods.base`):
which parameters train, what happens around an optimizer step, and what a run saves.

A new method is one new file plus a registry line.
"""

from __future__ import annotations

from boothkit.config import METHODS
from boothkit.errors import BoothkitError
from boothkit.methods.base import TrainingMethod
from boothkit.methods.full import FullFineTune
from boothkit.methods.lora import LoRA
from boothkit.methods.pivotal import Pivotal
from boothkit.methods.textual_inversion import TextualInversion

__all__ = ["METHODS", "TrainingMethod", "get_method"]

_REGISTRY: dict[str, type] = {"lora": LoRA, "full": FullFineTune, "ti": TextualInversion, "pivotal": Pivotal}


def get_method(name: str) -> TrainingMethod:
    if name not in _REGISTRY:
        raise BoothkitError(f"unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    method: TrainingMethod = _REGISTRY[name]()
    return method
