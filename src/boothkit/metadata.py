"""What boothkit's .safetensors files say about themselves: written once here, read back here.

Every file a run writes carries boothkit's own `boothkit_*` description (family, method, token,
class noun, settings) and the kohya `ss_*` and SAI `modelspec.*` keys A1111, ComfyUI and model
sites read. `train`, `export` and `generate` all go through this module, so the keys a file is
written with and the keys a reader looks for are the same ones.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from safetensors import safe_open

from boothkit import __version__
from boothkit.config import TrainConfig
from boothkit.families.base import FamilyName
from boothkit.files import CHECKPOINT_WEIGHTS

# kohya's `ss_base_model_version` per family, and back.
_SS_VERSIONS: dict[str, str] = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "flux1": "flux1"}
# The SAI model-spec architecture of each family (kohya sd-scripts' names), and its reference code.
_ARCHITECTURES: dict[str, str] = {
    "sd1": "stable-diffusion-v1",
    "sd2": "stable-diffusion-v2-512",
    "sdxl": "stable-diffusion-xl-v1-base",
    "flux1": "flux-1-dev",
}
_IMPLEMENTATIONS: dict[str, str] = {
    "sdxl": "https://github.com/Stability-AI/generative-models",
    "flux1": "https://github.com/black-forest-labs/flux",
}
SS_FAMILIES: dict[str, str] = {**{v: k for k, v in _SS_VERSIONS.items()}, "sd_v2_v": "sd2"}


def ss_base_model_version(family: str, v_prediction: bool = False) -> str:
    """kohya's name for a family (SD 2.x v-prediction models get ``_v``)."""
    return _SS_VERSIONS[family] + ("_v" if v_prediction and family == "sd2" else "")


# ----------------------------------------------------------------------------- writing


def lora_metadata(
    *,
    base_model: str,
    family: FamilyName,
    rank: int,
    alpha: float,
    steps: int,
    resolution: int,
    method: str = "lora",
    token: str = "",
    class_noun: str = "",
    images_hash: str = "",
    prediction_type: str = "epsilon",
    output_name: str = "",
    learning_rate: float | None = None,
    **extra: str,
) -> dict[str, str]:
    """The `.safetensors` header boothkit writes: its own `boothkit_*` description plus the kohya
    `ss_*` and SAI `modelspec.*` keys A1111 / ComfyUI / civitai read (version detection, trigger
    words, resolution, network size)."""
    boothkit_version = __version__
    v_pred = prediction_type in ("v_prediction", "v")
    trigger = " ".join(w for w in (token, class_noun) if w)
    name = output_name or "_".join(w for w in (token, class_noun) if w) or "boothkit_lora"
    arch = "stable-diffusion-v2-768-v" if family == "sd2" and v_pred else _ARCHITECTURES[family]
    meta: dict[str, Any] = {
        "boothkit_version": boothkit_version,
        "boothkit_base_model": base_model,
        "boothkit_family": family,
        "boothkit_method": method,
        "boothkit_token": token,
        "boothkit_class_noun": class_noun,
        "boothkit_rank": rank,
        "boothkit_alpha": alpha,
        "boothkit_steps": steps,
        "boothkit_resolution": resolution,
        "boothkit_images_hash": images_hash,
        # kohya sd-scripts keys, as A1111's Lora extension and civitai read them.
        "ss_network_module": "networks.lora",
        "ss_network_dim": rank,
        "ss_network_alpha": alpha,
        "ss_base_model_version": ss_base_model_version(family, v_pred),
        "ss_v2": str(family == "sd2"),
        "ss_sd_model_name": Path(base_model).name or base_model,
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_max_train_steps": steps,
        "ss_steps": steps,
        "ss_output_name": name,
        "ss_training_comment": f"boothkit {boothkit_version} {method}" + (f": {trigger}" if trigger else ""),
        # SAI model spec, read by ComfyUI and model sites.
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{arch}/lora",
        "modelspec.implementation": _IMPLEMENTATIONS.get(family, "diffusers"),
        "modelspec.title": name,
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.prediction_type": {"flow": "flow"}.get(prediction_type, "v" if v_pred else "epsilon"),
        "modelspec.date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    }
    if trigger:
        meta["modelspec.trigger_phrase"] = trigger
        meta["ss_tag_frequency"] = json.dumps({"boothkit": {trigger: 1}})
    if learning_rate is not None:
        meta["ss_learning_rate"] = learning_rate
    meta.update(extra)
    return {k: str(v) for k, v in meta.items()}


def run_metadata(
    config: TrainConfig, *, family: FamilyName, prediction_type: str, images_hash: str, resolution: int
) -> dict[str, str]:
    """The description every file of a run shares; each method adapts it to what it writes
    (`TrainingMethod.file_metadata`)."""
    return lora_metadata(
        base_model=config.model,
        family=family,
        rank=config.rank,
        alpha=config.lora_alpha if config.lora_alpha is not None else config.rank,
        steps=config.steps,
        resolution=resolution,
        method=config.method,
        token=config.token,
        class_noun=config.class_noun or "",
        images_hash=images_hash,
        prediction_type=prediction_type,
        output_name=Path(config.output).name,
        learning_rate=config.lr,
    )


# ----------------------------------------------------------------------------- reading


def read_metadata(path: Path) -> dict[str, str]:
    """A .safetensors adapter's metadata (what boothkit or kohya wrote about it); {} for other files
    and for training checkpoints, whose metadata describes no adapter."""
    if path.suffix.lower() != ".safetensors" or path.name == CHECKPOINT_WEIGHTS:
        return {}
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def trained_family(path: Path) -> str | None:
    """The family a .safetensors adapter says it was trained for (boothkit or kohya metadata)."""
    meta = read_metadata(path)
    return meta.get("boothkit_family") or SS_FAMILIES.get(meta.get("ss_base_model_version", ""))


def trained_token(meta: dict[str, str]) -> str | None:
    """The word a boothkit adapter's prompts must hold, from its metadata: its placeholder (``<sks>``,
    textual inversion and pivotal tuning) or its token (LoRA, full fine-tune); None for other files."""
    return meta.get("boothkit_placeholder") or meta.get("boothkit_token")


__all__ = [
    "SS_FAMILIES",
    "lora_metadata",
    "read_metadata",
    "run_metadata",
    "ss_base_model_version",
    "trained_family",
    "trained_token",
]
