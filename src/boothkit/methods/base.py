"""The interface every training method implements, and what methods share.

The loop calls `setup` once (add adapters or tokens, mark what trains, return optimizer parameter
groups), `before_update`/`after_update` around each optimizer step, `state`/`load_state` for
checkpoints, and `save` at the end. What a method means for everyone else is answered here too,
so no caller tests the method's name: the word prompts call the subject by (`identifier`), what
its files say about themselves (`file_metadata`), and whether a run is a model of its own
(`standalone`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from boothkit.config import TrainConfig
from boothkit.families import Family

# The metadata keys that describe a LoRA network; files without a network leave them out.
NETWORK_KEYS = ("boothkit_rank", "boothkit_alpha")
NETWORK_PREFIX = "ss_network"


class TrainingMethod(Protocol):
    name: str

    @property
    def trains_text_encoder(self) -> bool:
        """Whether prompts must be encoded every step (no embedding cache): a text encoder or a token trains."""
        ...

    @property
    def learns_tokens(self) -> bool:
        """Whether the method learns a new token's embedding (textual inversion, pivotal tuning)."""
        ...

    @property
    def standalone(self) -> bool:
        """Whether a run's result is a model of its own (``--model RUN``) rather than an adapter on
        its base model (``--lora RUN``)."""
        ...

    def identifier(self, token: str) -> str:
        """The word a prompt calls the subject by, known before setup: ``token`` itself, or the new
        placeholder a learned embedding is loaded under (``<sks>``)."""
        ...

    def file_metadata(self, common: dict[str, str]) -> dict[str, str]:
        """What this method's files say about themselves, from the description every run shares."""
        ...

    def setup(self, model: Family, config: TrainConfig) -> list[dict[str, Any]]:
        """Prepare the model for training; return optimizer parameter groups (params, lr)."""
        ...

    def prompt_token(self, token: str) -> str:
        """What `{token}` becomes in training prompts after setup (all of a new token's vectors)."""
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


def without_network(metadata: dict[str, str], architecture_suffix: str = "") -> dict[str, str]:
    """``metadata`` for a file that holds no LoRA network: the network keys dropped, and the
    model-spec architecture saying what the file is instead."""
    meta = {k: v for k, v in metadata.items() if not k.startswith(NETWORK_PREFIX) and k not in NETWORK_KEYS}
    if "modelspec.architecture" in meta:
        meta["modelspec.architecture"] = (
            meta["modelspec.architecture"].removesuffix("/lora") + architecture_suffix
        )
    return meta


def fp32_trainable(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    """Mark params trainable and keep them in fp32 (master weights) even when the frozen rest is half."""
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params
