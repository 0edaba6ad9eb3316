"""Full fine-tune: every weight of the denoiser trains (and, optionally, the text encoder(s)), as in the
DreamBooth paper. Highest fidelity, largest output: a diffusers pipeline folder `model/` in the run
folder (`DiffusionPipeline.from_pretrained(run/"model")`), optionally one single-file checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from boothkit.checkpoint import all_finite
from boothkit.config import TrainConfig
from boothkit.errors import BoothkitError
from boothkit.families import FAMILY_NAMES, Family
from boothkit.families.single_file import DENOISER_ONLY, save_single_file
from boothkit.files import MODEL_DIR, SINGLE_FILE
from boothkit.io import atomic_write_dir
from boothkit.methods.base import fp32_trainable, without_network


@torch.no_grad()
def ema_update(shadow: list[torch.Tensor], params: list[torch.Tensor], decay: float) -> None:
    """shadow <- decay * shadow + (1 - decay) * param, in place."""
    for s, p in zip(shadow, params, strict=True):
        s.lerp_(p.detach().to(s.dtype), 1.0 - decay)


def ema_decay_at(step: int, decay: float) -> float:
    """The usual warm-up: early on the average follows the weights closely, later it smooths."""
    return min(decay, (1 + step) / (10 + step))


class FullFineTune:
    name = "full"

    def __init__(self) -> None:
        self.denoiser_params: list[tuple[str, torch.nn.Parameter]] = []
        self.te_params: list[torch.nn.Parameter] = []
        self.te_stop_step: int | None = None
        self.ema: list[torch.Tensor] | None = None
        self.ema_decay = 0.999
        self._train_te = False
        self.save_single = False

    standalone = True
    learns_tokens = False

    @property
    def trains_text_encoder(self) -> bool:
        return self._train_te

    def identifier(self, token: str) -> str:
        return token

    def file_metadata(self, common: dict[str, str]) -> dict[str, str]:
        return without_network(common)

    def setup(self, model: Family, config: TrainConfig) -> list[dict[str, Any]]:
        self.save_single = config.save_single_file
        if self.save_single and config.train_text_encoder and model.name in DENOISER_ONLY:
            raise BoothkitError(
                f"--save-single-file with --train-text-encoder: a {FAMILY_NAMES[model.name]} single file holds "
                f"the {model.denoiser_name} alone, so the trained text encoder would be left out of it",
                hint="drop --save-single-file (the run's model/ folder holds everything), or --train-text-encoder",
            )
        self.denoiser_params = list(model.denoiser.named_parameters())
        groups: list[dict[str, Any]] = [
            {"params": fp32_trainable([p for _, p in self.denoiser_params]), "lr": config.lr}
        ]
        if config.train_text_encoder:
            self._train_te = True
            encoders = model.trainable_text_encoders().values()
            self.te_params = fp32_trainable([p for e in encoders for p in e.parameters()])
            groups.append({"params": self.te_params, "lr": config.text_encoder_lr or config.lr})
            if config.text_encoder_fraction < 1:
                self.te_stop_step = int(config.text_encoder_fraction * config.steps)
        if config.ema:
            self.ema_decay = config.ema_decay
            self.ema = [p.detach().clone().float() for _, p in self.denoiser_params]
        return groups

    def prompt_token(self, token: str) -> str:
        return token

    def before_update(self, model: Family, step: int) -> None:
        if self.te_stop_step is not None and step >= self.te_stop_step:
            for p in self.te_params:
                p.grad = None

    def after_update(self, model: Family, step: int) -> None:
        if self.ema is not None:
            ema_update(self.ema, [p for _, p in self.denoiser_params], ema_decay_at(step, self.ema_decay))

    def state(self) -> dict[str, torch.Tensor]:
        if self.ema is None:
            return {}
        return {f"ema.{name}": t for (name, _), t in zip(self.denoiser_params, self.ema, strict=True)}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.ema is not None:
            for (name, _), t in zip(self.denoiser_params, self.ema, strict=True):
                t.copy_(tensors[f"ema.{name}"])

    def save(self, model: Family, out_dir: Path, metadata: dict[str, str]) -> list[Path]:
        denoiser = model.denoiser
        raw = None
        if self.ema is not None:  # save the averaged weights, keep the raw ones in memory
            raw = [p.detach().clone() for _, p in self.denoiser_params]
            with torch.no_grad():
                for (_, p), e in zip(self.denoiser_params, self.ema, strict=True):
                    p.copy_(e)
        try:
            if not all_finite({n: p for n, p in denoiser.named_parameters()}):
                raise BoothkitError(
                    f"refusing to write {out_dir / MODEL_DIR}: some {model.denoiser_name} weights are not finite"
                )
            written = [self._save_pipeline(model, out_dir)]
            if self.save_single:
                written.append(save_single_file(model.pipeline(), out_dir / SINGLE_FILE, metadata=metadata))
        finally:
            if raw is not None:
                with torch.no_grad():
                    for (_, p), r in zip(self.denoiser_params, raw, strict=True):
                        p.copy_(r)
        return written

    @staticmethod
    def _save_pipeline(model: Family, out_dir: Path) -> Path:
        """save_pretrained into a temporary folder beside the target, then one atomic rename."""
        return atomic_write_dir(
            out_dir / MODEL_DIR, lambda tmp: model.pipeline().save_pretrained(tmp, safe_serialization=True)
        )
