"""Pivotal tuning: new token embeddings and a LoRA, together or embeddings first.

With `--ti-fraction 0` both train from the start. With `--ti-fraction f`, the first f of the steps
train only the embeddings (the "pivot"), the rest only the LoRA with the embeddings fixed, as in
Pivotal Tuning Inversion. The run folder gets both files; `boothkit generate --lora run/` applies both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from boothkit.config import TrainConfig
from boothkit.families import Family
from boothkit.methods.lora import LoRA, lora_parameters
from boothkit.methods.textual_inversion import TextualInversion


class Pivotal:
    name = "pivotal"

    def __init__(self) -> None:
        self.ti = TextualInversion()
        self.lora = LoRA()
        self.switch_step: int | None = None

    standalone = False
    learns_tokens = True

    @property
    def trains_text_encoder(self) -> bool:
        return True

    def identifier(self, token: str) -> str:
        return self.ti.identifier(token)

    def file_metadata(self, common: dict[str, str]) -> dict[str, str]:
        return common  # the LoRA's description; the embeddings file beside it shares it

    def setup(self, model: Family, config: TrainConfig) -> list[dict[str, Any]]:
        groups = self.ti.setup(model, config) + self.lora.setup(model, config)
        if config.ti_fraction > 0:
            self.switch_step = int(config.ti_fraction * config.steps)
        return groups

    def prompt_token(self, token: str) -> str:
        return self.ti.prompt_token(token)

    def before_update(self, model: Family, step: int) -> None:
        self.lora.before_update(model, step)
        if self.switch_step is None:
            return
        if step < self.switch_step:  # phase 1: embeddings only
            adapted = (model.denoiser, *model.trainable_text_encoders().values())
            frozen = [p for m in adapted for p in lora_parameters(m)]
        else:  # phase 2: LoRA only, the embeddings stay where phase 1 left them
            frozen = [e.get_input_embeddings().weight for e in model.text_encoders]
        for p in frozen:
            p.grad = None  # AdamW leaves parameters without a gradient untouched

    def after_update(self, model: Family, step: int) -> None:
        self.ti.after_update(model, step)

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def save(self, model: Family, out_dir: Path, metadata: dict[str, str]) -> list[Path]:
        meta = {**metadata, "boothkit_placeholder": self.ti.tokens[0]}
        return self.lora.save(model, out_dir, meta) + self.ti.save(model, out_dir, metadata)
