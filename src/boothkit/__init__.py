"""boothkit: DreamBooth personalisation of Stable Diffusion 1.x, 2.x, SDXL and Flux.1.

Importing the package is cheap: torch and diffusers load only when a function that needs them runs.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("boothkit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:
    from boothkit.config import TrainConfig
    from boothkit.data.images import check_folder, load_image
    from boothkit.families import load_model
    from boothkit.generate import generate
    from boothkit.train import train

__all__ = ["TrainConfig", "__version__", "check_folder", "generate", "load_image", "load_model", "train"]

_LAZY = {
    "TrainConfig": "boothkit.config",
    "check_folder": "boothkit.data.images",
    "load_image": "boothkit.data.images",
    "load_model": "boothkit.families",
    "generate": "boothkit.generate",
    "train": "boothkit.train",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'boothkit' has no attribute {name!r}")
