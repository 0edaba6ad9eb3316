"""DreamBooth-LoRA: low-rank adapters on the UNet's attention projections (and optionally the text encoders).

The base weights stay frozen and untouched; only the peft `lora_A` / `lora_B` matrices train. The
output is a diffusers-layout `pytorch_lora_weights.safetensors` that `pipe.load_lora_weights(run_dir)`
loads, with peft's adapter config in its metadata so the alpha survives.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from boothkit.checkpoint import all_finite
from boothkit.config import TrainConfig
from boothkit.errors import BoothkitError
from boothkit.families import Family
from boothkit.files import LORA_FILE
from boothkit.io import atomic_save_safetensors, write_failure
from boothkit.methods.base import fp32_trainable


def lora_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for n, p in module.named_parameters() if "lora_" in n]


def _check_targets(module: torch.nn.Module, targets: tuple[str, ...], flag: str, hint: str) -> None:
    """Refuse target names that match no module of ``module`` (as peft matches them: the whole name or
    its last dotted parts). peft itself refuses only a list where none matches and skips a typo."""
    names = [name for name, _ in module.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise BoothkitError(
            f"{flag}: no module named {', '.join(missing)} in the {module.__class__.__name__}", hint=hint
        )


class LoRA:
    name = "lora"

    def __init__(self) -> None:
        self._train_te = False
        self._te_stop_step: int | None = None
        self._configs: dict[str, Any] = {}

    standalone = False
    learns_tokens = False

    @property
    def trains_text_encoder(self) -> bool:
        return self._train_te

    def identifier(self, token: str) -> str:
        return token

    def file_metadata(self, common: dict[str, str]) -> dict[str, str]:
        return common

    def setup(self, model: Family, config: TrainConfig) -> list[dict[str, Any]]:
        alpha = config.lora_alpha if config.lora_alpha is not None else float(config.rank)
        # Seeded here so the adapters' initial weights are part of the run's determinism.
        torch.manual_seed(config.seed)
        targets = config.target_modules or model.default_lora_targets
        denoiser_config = LoraConfig(
            r=config.rank,
            lora_alpha=alpha,  # type: ignore[arg-type]  # peft accepts float alphas
            lora_dropout=config.lora_dropout,
            init_lora_weights="gaussian",
            target_modules=list(targets),
        )
        _check_targets(
            model.denoiser,
            targets,
            "--target-modules",
            hint="name the modules' last parts, e.g. " + " ".join(model.default_lora_targets),
        )
        model.denoiser.add_adapter(denoiser_config)
        self._configs[model.denoiser_name] = denoiser_config
        groups: list[dict[str, Any]] = [{"params": self._trainable(model.denoiser), "lr": config.lr}]
        if config.train_text_encoder:
            self._train_te = True
            if config.text_encoder_fraction < 1:
                self._te_stop_step = int(config.text_encoder_fraction * config.steps)
            te_config = LoraConfig(
                r=config.rank,
                lora_alpha=alpha,  # type: ignore[arg-type]  # peft accepts float alphas
                lora_dropout=config.lora_dropout,
                init_lora_weights="gaussian",
                target_modules=list(config.text_encoder_targets),
            )
            te_lr = config.text_encoder_lr or config.lr
            for prefix, encoder in model.trainable_text_encoders().items():
                _check_targets(
                    encoder,
                    config.text_encoder_targets,
                    "--text-encoder-targets",
                    hint="CLIP's are q_proj k_proj v_proj out_proj (attention), fc1 fc2 (MLP), token_embedding",
                )
                encoder.add_adapter(te_config)
                self._configs[prefix] = te_config
                groups.append({"params": self._trainable(encoder), "lr": te_lr})
        return groups

    @staticmethod
    def _trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
        return fp32_trainable(lora_parameters(module))

    def prompt_token(self, token: str) -> str:
        return token

    def before_update(self, model: Family, step: int) -> None:
        if self._te_stop_step is not None and step >= self._te_stop_step:
            for encoder in model.trainable_text_encoders().values():
                for p in lora_parameters(encoder):
                    p.grad = None  # the text encoder's share of the run is over: no update

    def after_update(self, model: Family, step: int) -> None:
        pass

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def state_dicts(self, model: Family) -> dict[str, dict[str, torch.Tensor]]:
        """LoRA tensors per component with peft's key names (`...to_q.lora_A.weight`), which
        `save_lora_weights` prefixes with the component name and diffusers' loader reads as they are."""
        # save_embedding_layers=False: peft would otherwise add the whole token-embedding matrix of
        # an encoder whose vocabulary grew (pivotal tuning's new token), a key without "lora" that
        # diffusers' loader refuses; the new token's vectors are saved apart (learned_embeds).
        out = {model.denoiser_name: get_peft_model_state_dict(model.denoiser, save_embedding_layers=False)}
        if self._train_te:
            for prefix, encoder in model.trainable_text_encoders().items():
                out[prefix] = get_peft_model_state_dict(encoder, save_embedding_layers=False)
        return out

    def save(self, model: Family, out_dir: Path, metadata: dict[str, str]) -> list[Path]:
        layers = self.state_dicts(model)
        if not all(all_finite(layer) for layer in layers.values()):
            raise BoothkitError(f"refusing to write {out_dir / LORA_FILE}: some LoRA weights are not finite")
        kwargs: dict[str, Any] = {}
        for prefix in (model.denoiser_name, *model.trainable_text_encoders()):
            if prefix in layers:
                kwargs[f"{prefix}_lora_layers"] = layers[prefix]
                kwargs[f"{prefix}_lora_adapter_metadata"] = self._configs[prefix].to_dict()
        # Let diffusers lay out keys and adapter metadata exactly as its loader expects, then add
        # boothkit's description and move the file into place atomically.
        try:
            with tempfile.TemporaryDirectory() as tmp:
                model.pipeline_class().save_lora_weights(tmp, safe_serialization=True, **kwargs)
                tensors = load_file(f"{tmp}/{LORA_FILE}")
                with safe_open(f"{tmp}/{LORA_FILE}", "pt") as f:
                    file_meta = dict(f.metadata() or {})
        except (OSError, SafetensorError) as e:  # the system's temporary folder is full or unwritable
            raise write_failure(out_dir / LORA_FILE, e) from None
        file_meta.update(metadata)
        file_meta["boothkit"] = json.dumps({k: v for k, v in metadata.items()}, sort_keys=True)
        return [atomic_save_safetensors(tensors, out_dir / LORA_FILE, file_meta)]
