"""Model families behind one interface, and the loader that finds which family a model is.

`load_model(spec)` takes a hub id, a local diffusers folder or a single-file `.safetensors`,
detects the family from the files (never from the name), and returns a `Family`
(`families.sd.SD` for SD 1.x / 2.x, `families.sdxl.SDXL`).
"""

from __future__ import annotations

from boothkit.families.base import (
    FAMILY_NAMES,
    Conditioning,
    Family,
    FamilyName,
    LoadOptions,
    ModelSource,
    PredictionType,
    load_pipeline_folder,
    prompt_fit,
)
from boothkit.families.loading import (
    PICKLE_SUFFIXES,
    check_safetensors,
    detect_family,
    fingerprint,
    load_model,
    refuse_pickle,
    resolve_model,
    torch_load_weights,
)

__all__ = [
    "FAMILY_NAMES",
    "PICKLE_SUFFIXES",
    "Conditioning",
    "Family",
    "FamilyName",
    "LoadOptions",
    "ModelSource",
    "PredictionType",
    "check_safetensors",
    "detect_family",
    "fingerprint",
    "load_model",
    "load_pipeline_folder",
    "prompt_fit",
    "refuse_pickle",
    "resolve_model",
    "torch_load_weights",
]
