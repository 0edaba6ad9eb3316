"""Textual inversion: learn only the embedding of a new token (or a few vectors of it).

New placeholder tokens are added to each tokenizer and their rows to each text encoder's embedding
matrix, initialised from an existing word (the class noun by default). The whole matrix has a
gradient, but after every optimizer step every other row is copied back from the original, so they
are bit-identical at the end. The output `learned_embeds.safetensors` loads with
`pipe.load_textual_inversion` ({placeholder: (n, D)} for SD 1.x/2.x; per text encoder for the others,
under the family's `embedding_keys`: {"clip_l", "clip_g"} for SDXL, {"clip_l", "t5"} for Flux.1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from boothkit.config import TrainConfig
from boothkit.errors import BoothkitError
from boothkit.families import Family
from boothkit.files import EMBEDDINGS_FILE
from boothkit.io import atomic_save_safetensors
from boothkit.methods.base import fp32_trainable, without_network


def placeholder_tokens(token: str, num_vectors: int) -> list[str]:
    """`<sks>`, `<sks>_1`, ...: diffusers' naming, so `load_textual_inversion` expands `<sks>` alike."""
    base = token if token.startswith("<") and token.endswith(">") else f"<{token}>"
    return [base] + [f"{base}_{i}" for i in range(1, num_vectors)]


class TextualInversion:
    name = "ti"

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.ids: list[list[int]] = []  # per text encoder
        self.originals: list[torch.Tensor] = []  # per text encoder: the embedding matrix before training
        self.family = ""

    standalone = False
    learns_tokens = True

    @property
    def trains_text_encoder(self) -> bool:
        return True

    def identifier(self, token: str) -> str:
        return placeholder_tokens(token, 1)[0]

    def file_metadata(self, common: dict[str, str]) -> dict[str, str]:
        return without_network(common, "/textual-inversion")

    def setup(self, model: Family, config: TrainConfig) -> list[dict[str, Any]]:
        self.family = model.name
        self.tokens = placeholder_tokens(config.token, config.num_vectors)
        init_word = config.initializer_token or config.class_noun or ""
        params = []
        for tokenizer, encoder in zip(model.tokenizers, model.text_encoders, strict=True):
            if tokenizer.add_tokens(self.tokens) != len(self.tokens):
                raise BoothkitError(
                    f"token {self.tokens[0]!r} is already in the tokenizer; textual inversion needs a new token",
                    hint="pick another --token",
                )
            init_ids = tokenizer.encode(init_word, add_special_tokens=False)
            if not init_ids:
                raise BoothkitError(f"--initializer-token {init_word!r} encodes to nothing")
            # Never shrink: T5's matrix has spare rows past its tokenizer's vocabulary.
            encoder.resize_token_embeddings(
                max(len(tokenizer), encoder.get_input_embeddings().num_embeddings)
            )
            weight = encoder.get_input_embeddings().weight
            ids = tokenizer.convert_tokens_to_ids(self.tokens)
            with torch.no_grad():
                # A multi-piece initializer starts from the mean of its pieces.
                weight[ids] = weight[init_ids].mean(dim=0, keepdim=True).to(weight.dtype)
            fp32_trainable([weight])
            self.ids.append(list(ids))
            self.originals.append(weight.detach().clone())
            params.append(weight)
        return [{"params": params, "lr": config.ti_lr, "weight_decay": 0.0}]

    def prompt_token(self, token: str) -> str:
        return " ".join(self.tokens)

    def before_update(self, model: Family, step: int) -> None:
        pass

    @torch.no_grad()
    def after_update(self, model: Family, step: int) -> None:
        for encoder, ids, original in zip(model.text_encoders, self.ids, self.originals, strict=True):
            weight = encoder.get_input_embeddings().weight
            keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
            keep[ids] = False
            weight[keep] = original[keep]

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def vectors(self, model: Family) -> list[torch.Tensor]:
        """The learned vectors, (num_vectors, D) per text encoder."""
        return [
            encoder.get_input_embeddings().weight[ids].detach().float().cpu()
            for encoder, ids in zip(model.text_encoders, self.ids, strict=True)
        ]

    def save(self, model: Family, out_dir: Path, metadata: dict[str, str]) -> list[Path]:
        vectors = self.vectors(model)
        if not all(bool(torch.isfinite(v).all()) for v in vectors):
            raise BoothkitError(
                f"refusing to write {out_dir / EMBEDDINGS_FILE}: the embeddings are not finite"
            )
        keys = model.embedding_keys or (self.tokens[0],)
        tensors = dict(zip(keys, vectors, strict=True))
        meta = {
            **metadata,
            "boothkit_placeholder": self.tokens[0],
            "boothkit_num_vectors": str(len(self.tokens)),
        }
        return [atomic_save_safetensors(tensors, out_dir / EMBEDDINGS_FILE, meta)]
