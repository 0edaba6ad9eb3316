"""Adapters on a base model: what `--lora` names, and loading them into a pipeline.

An adapter is a run folder (its LoRA, its learned embeddings, or both for pivotal tuning), a LoRA
run's training checkpoint (`run/checkpoints/step-000200`), or a file (a diffusers or kohya LoRA,
textual-inversion embeddings), each with a weight (`PATH:0.8`).

:class:`AdapterSet` is the one way adapters get into a pipeline, for `generate`, `grid` and
`morph` alike: each file is loaded once (a LoRA as a named peft adapter, learned embeddings into
the tokenizer and text encoder) after its family is checked against the base model, and every
image activates exactly the adapters it uses, with their weights.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from boothkit.errors import BoothkitError
from boothkit.families import (
    FAMILY_NAMES,
    PICKLE_SUFFIXES,
    check_safetensors,
    refuse_pickle,
    torch_load_weights,
)
from boothkit.files import CHECKPOINT_MANIFEST, CHECKPOINT_WEIGHTS, EMBEDDINGS_FILE, LORA_FILE
from boothkit.flags import Number
from boothkit.metadata import read_metadata, trained_family, trained_token
from boothkit.templates import names_token

# Why a LoRA does not fit a base model, as both refusals say.
_WRONG_FAMILY = "a LoRA only fits the model family it was trained for (SD 1.x, SD 2.x or SDXL)"


@dataclass(frozen=True)
class Adapter:
    path: Path
    weight: float = 1.0


# ----------------------------------------------------------------------------- what --lora names


def split_weight(spec: str, flag: str = "--lora") -> tuple[str, float]:
    """`path[:weight]` -> (path, weight); a path that exists as written keeps any ':' it contains."""
    head, sep, tail = spec.rpartition(":")
    if not sep or not head or Path(spec).exists():
        return spec, 1.0
    try:
        weight = float(tail)
    except ValueError:
        raise BoothkitError(
            f"{flag} {spec!r}: weight {tail!r} is not a number", hint="write it as PATH:0.8"
        ) from None
    problem = Number(example=0.8).problem(weight)  # any finite weight: a negative one subtracts the LoRA
    if problem is not None:
        raise BoothkitError(f"{flag} {spec!r}: weight {problem}", hint="write it as PATH:0.8")
    return head, weight


def parse_adapter(spec: str, *, allow_pickle: bool = False) -> Adapter:
    """`run_dir`, a LoRA run's checkpoint folder (`run/checkpoints/step-000200`), `file.safetensors`,
    or any of them with `:weight` (e.g. `style.safetensors:0.5`)."""
    path_part, weight = split_weight(spec)
    path = Path(path_part).expanduser()
    if (path / CHECKPOINT_WEIGHTS).is_file() and not (path / LORA_FILE).exists():
        checkpoint_lora_state_dict(path)  # fail now, with a clear message, if it is not a LoRA run
        return Adapter(path / CHECKPOINT_WEIGHTS, weight)
    if path.is_dir():
        # A run folder: its LoRA (with the embeddings beside it for pivotal runs), or a textual-inversion run's embeddings.
        path = (
            path / LORA_FILE
            if (path / LORA_FILE).exists() or not (path / EMBEDDINGS_FILE).exists()
            else path / EMBEDDINGS_FILE
        )
    if not path.is_file():
        raise BoothkitError(
            f"--lora {spec!r}: {path} does not exist",
            hint="pass a boothkit run folder or a LoRA .safetensors file",
        )
    if path.suffix.lower() in PICKLE_SUFFIXES:
        refuse_pickle(path, allow_pickle)
    else:
        check_safetensors(path)
    return Adapter(path, weight)


def checkpoint_lora_state_dict(folder: Path) -> dict[str, Any]:
    """A training checkpoint's LoRA tensors in the layout `load_lora_weights` reads.

    Checkpoints store peft's parameter names (`unet.<module>.lora_A.default.weight`) and no
    adapter config; diffusers reads such tensors with alpha = rank (scale 1). So the adapter name
    is dropped and lora_B is multiplied by the run's alpha / rank, which gives the same update
    W + (alpha / rank) B A the run trained.
    """
    try:
        manifest = json.loads((folder / CHECKPOINT_MANIFEST).read_text(encoding="utf-8"))
        config = dict(manifest["config"])
    except (OSError, ValueError, KeyError, TypeError):
        raise BoothkitError(
            f"{folder} has no readable {CHECKPOINT_MANIFEST}, so its LoRA settings are unknown",
            hint="pass a complete checkpoint folder (run/checkpoints/step-NNNNNN) or a run folder",
        ) from None
    method = config.get("method", "lora")
    if method != "lora":
        raise BoothkitError(
            f"{folder} is a checkpoint of a {method!r} run; only LoRA checkpoints can be compared"
        )
    rank = float(config.get("rank") or 0)
    alpha = config.get("lora_alpha")
    scale = float(alpha) / rank if alpha is not None and rank else 1.0
    pattern = re.compile(r"^(?P<module>.+)\.(?P<which>lora_[AB])\.[^.]+\.weight$")
    out: dict[str, Any] = {}
    for key, tensor in load_file(folder / CHECKPOINT_WEIGHTS).items():
        m = pattern.match(key)
        if not m:
            continue
        value = tensor * scale if m["which"] == "lora_B" and scale != 1.0 else tensor
        out[f"{m['module']}.{m['which']}.weight"] = value
    if not out:
        raise BoothkitError(f"{folder / CHECKPOINT_WEIGHTS} holds no LoRA tensors")
    return out


def lora_source(adapter: Adapter) -> tuple[Any, dict[str, Any]]:
    """What `load_lora_weights` takes for this adapter: a folder + file name, or a state dict."""
    if adapter.path.name == CHECKPOINT_WEIGHTS:
        return checkpoint_lora_state_dict(adapter.path.parent), {}
    if adapter.path.suffix.lower() in PICKLE_SUFFIXES:  # parse_adapter allowed it: tensors only
        return torch_load_weights(adapter.path), {}
    return str(adapter.path.parent), {"weight_name": adapter.path.name}


def missing_tokens(prompt: str, adapters: Sequence[Adapter]) -> list[str]:
    """A note per boothkit adapter whose token the prompt does not name (the subject would not show)."""
    notes = []
    for adapter in adapters:
        token = trained_token(read_metadata(adapter.path))
        if token and not names_token(prompt, token):
            notes.append(
                f"the prompt does not name {token}, the token {adapter.path} was trained on: "
                f"without it the subject will not appear (e.g. 'a photo of {token} ...')"
            )
    return notes


def run_words(adapters: Sequence[Adapter]) -> tuple[str | None, str | None]:
    """(token, class noun) the boothkit runs among ``adapters`` were trained with, each where they all
    agree (None otherwise, or for files that do not say)."""
    tokens, nouns = set(), set()
    for adapter in adapters:
        meta = read_metadata(adapter.path)
        if meta:
            tokens.add(trained_token(meta))
            nouns.add(meta.get("boothkit_class_noun"))
    token = next(iter(tokens)) if len(tokens) == 1 else None
    noun = next(iter(nouns)) if len(nouns) == 1 else None
    return token, noun


# ----------------------------------------------------------------------------- learned embeddings


# An embeddings file's per-text-encoder keys (the families' `embedding_keys`) -> the pipeline's
# text encoder and tokenizer they load into.
EMBEDDING_TARGETS: dict[str, tuple[str, str]] = {
    "clip_l": ("text_encoder", "tokenizer"),
    "clip_g": ("text_encoder_2", "tokenizer_2"),
    "t5": ("text_encoder_2", "tokenizer_2"),
}


def is_embeddings_file(path: Path) -> bool:
    """Textual-inversion embeddings: boothkit's file name, or a file whose tensors are all (n, D) vectors
    under one token key or per text encoder (SDXL's clip_l/clip_g, Flux's clip_l/t5)."""
    if path.name == EMBEDDINGS_FILE:
        return True
    if path.suffix.lower() != ".safetensors":
        return False
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    return bool(keys) and (set(keys) <= set(EMBEDDING_TARGETS) or (len(keys) == 1 and "lora" not in keys[0]))


def embeddings_of(adapter: Path) -> Path | None:
    """The learned-embeddings file an adapter brings: itself (textual inversion) or the one beside a
    run's LoRA (pivotal tuning); None for a plain LoRA."""
    if is_embeddings_file(adapter):
        return adapter
    beside = adapter.parent / EMBEDDINGS_FILE
    return beside if adapter.name == LORA_FILE and beside.exists() else None


def read_embeddings(path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(the token a run's embeddings file learned, its vectors per text encoder as [n, dim] tensors,
    keyed as in `EMBEDDING_TARGETS`, or by "" for a file of one text encoder's)."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    tensors = load_file(path)
    token = meta.get("boothkit_placeholder") or (next(iter(tensors)) if len(tensors) == 1 else None)
    if token is None:
        token = f"<{path.stem}>"
    if set(tensors) <= set(EMBEDDING_TARGETS):
        vectors = {k: tensors[k] for k in EMBEDDING_TARGETS if k in tensors}
    else:
        vectors = {"": next(iter(tensors.values()))}
    return token, {k: v.reshape(-1, v.shape[-1]) for k, v in vectors.items()}


def token_names(token: str, n: int) -> list[str]:
    """The tokenizer entries of an n-vector token, as diffusers' `load_textual_inversion` adds them."""
    return [token] + [f"{token}_{i}" for i in range(1, n)]


def load_embeddings(pipe: Any, path: Path) -> str:
    """Add learned token embeddings to the pipeline's tokenizer(s); returns the token to use in prompts."""
    token, vectors = read_embeddings(path)
    if token in pipe.tokenizer.get_vocab():
        raise BoothkitError(
            f"could not load embeddings {path}: the token {token} is already taken "
            "(by another --lora's embeddings, or a word of the base model)",
            hint="runs used together need different tokens: train one of them with another --token, e.g. --token zwx",
        )
    try:
        for key, v in vectors.items():
            if not key:
                pipe.load_textual_inversion(v, token=token)
                continue
            encoder, tokenizer = (getattr(pipe, name, None) for name in EMBEDDING_TARGETS[key])
            if encoder is None:
                raise BoothkitError(
                    f"{path} holds embeddings for {', '.join(vectors)}, and the base model has no "
                    f"{EMBEDDING_TARGETS[key][0]} for {key}",
                    hint="embeddings fit only the model family they were trained for",
                )
            pipe.load_textual_inversion(v, token=token, text_encoder=encoder, tokenizer=tokenizer)
    except (ValueError, RuntimeError) as e:
        raise BoothkitError(
            f"could not load embeddings {path} into this base model: {str(e).splitlines()[0]}",
            hint="embeddings fit only the model family they were trained for",
        ) from None
    return token


def check_family(adapter: Path, base_family: str | None) -> None:
    trained = trained_family(adapter)
    if base_family and trained and trained != base_family:
        raise BoothkitError(
            f"{adapter} was trained for {FAMILY_NAMES.get(trained, trained)} ({trained}) but the base model is "
            f"{FAMILY_NAMES.get(base_family, base_family)} ({base_family})",
            hint=f"use it with a {FAMILY_NAMES.get(trained, trained)} base model, or train one for this model",
        )


# ----------------------------------------------------------------------------- into a pipeline


class AdapterSet:
    """The adapters loaded into one pipeline, each file once, switched per image.

    A LoRA is loaded as a named peft adapter and activated with `set_adapters`; an image without
    adapters runs with LoRA disabled, which is the base model exactly. Learned tokens: runs that
    learned the same token (two textual-inversion runs of ``<sks>`` with different settings, the
    usual comparison) share its tokenizer entry, and each image puts its own run's vectors in it;
    an image without any of them uses the vectors of the file loaded first (only prompts that name
    the token are affected). One image can't use two runs that learned the same token.
    """

    def __init__(self, pipe: Any, family: str | None) -> None:
        self.pipe = pipe
        self.family = family
        self._names: dict[Path, str] = {}
        # Per embeddings file its (token, vectors per text encoder); per token the file loaded first;
        # per adapter its embeddings file, if it brings one.
        self._vectors: dict[Path, tuple[str, dict[str, torch.Tensor]]] = {}
        self._first: dict[str, Path] = {}
        self._embeddings: dict[Path, Path | None] = {}
        self._active: tuple[tuple[Path, float], ...] | None = None

    def activate(self, adapters: Sequence[Adapter]) -> None:
        """Make exactly ``adapters`` active with their weights (the same LoRA twice adds its weights)."""
        for adapter in adapters:
            self._load(adapter.path)
        self._refuse_shared_tokens([a.path for a in adapters])
        merged: dict[Path, float] = {}
        for a in adapters:
            merged[a.path] = merged.get(a.path, 0.0) + a.weight
        key = tuple(merged.items())
        if key == self._active:
            return
        loras = [(self._names[p], w) for p, w in merged.items() if p in self._names]
        if loras:
            self.pipe.enable_lora()
            self.pipe.set_adapters([n for n, _ in loras], adapter_weights=[w for _, w in loras])
        elif self._names:
            self.pipe.disable_lora()
        if self._first:
            self._use_vectors([e for p in merged if (e := self._embeddings[p]) is not None])
        self._active = key

    def _load(self, path: Path) -> None:
        if path in self._embeddings:
            return
        check_family(path, self.family)
        embeddings = embeddings_of(path)
        if embeddings is not None:
            self._load_embeddings(embeddings)
        self._embeddings[path] = embeddings
        if embeddings != path:  # a LoRA (pivotal tuning: beside its embeddings)
            self._names[path] = self._load_lora(Adapter(path))

    def _load_lora(self, adapter: Adapter) -> str:
        name = f"adapter_{len(self._names)}"
        source, kwargs = lora_source(adapter)
        try:
            with warnings.catch_warnings():
                # Several adapters side by side is the point here, not a mistake peft should warn about.
                warnings.filterwarnings("ignore", message=".*multiple adapters.*")
                self.pipe.load_lora_weights(source, adapter_name=name, **kwargs)
        except (ValueError, RuntimeError, KeyError) as e:
            raise BoothkitError(
                f"could not apply LoRA {adapter.path} to this base model: {str(e).splitlines()[0]}",
                hint=_WRONG_FAMILY,
            ) from None
        present = {n for names in self.pipe.get_list_adapters().values() for n in names}
        if name not in present:  # diffusers only warns when no key of the file matches the model
            raise BoothkitError(
                f"LoRA {adapter.path} has no layer that matches this {FAMILY_NAMES.get(self.family or '', 'base')} model",
                hint=_WRONG_FAMILY,
            )
        return name

    def _load_embeddings(self, path: Path) -> None:
        if path in self._vectors:
            return
        token, vectors = read_embeddings(path)
        first = self._first.get(token)
        if first is None:
            load_embeddings(self.pipe, path)
            self._first[token] = path
        elif [v.shape for v in vectors.values()] != [v.shape for v in self._vectors[first][1].values()]:
            raise BoothkitError(
                f"{path} and {first} both learned {token}, with different numbers of vectors or widths",
                hint="compare runs of the same family and --num-vectors, or train one with another --token",
            )
        self._vectors[path] = (token, vectors)

    def _refuse_shared_tokens(self, paths: Sequence[Path]) -> None:
        """One image, one run per learned token: two of its adapters that learned the same token (or
        one given twice) would each need the token's row."""
        owner: dict[str, Path] = {}
        for path in paths:
            embeddings = self._embeddings[path]
            if embeddings is None:
                continue
            token = self._vectors[embeddings][0]
            if token in owner:
                raise BoothkitError(
                    f"could not load embeddings {embeddings}: the token {token} is already taken by "
                    f"{owner[token]} (one image can't use two runs that both learned {token})",
                    hint="runs used together need different tokens: train one of them with another --token, "
                    "e.g. --token zwx; to compare such runs, put them in different grid rows",
                )
            owner[token] = embeddings

    def _use_vectors(self, embeddings: Sequence[Path]) -> None:
        """Put each learned token's vectors for this image into the text encoder(s)."""
        chosen = {self._vectors[path][0]: path for path in embeddings}
        for token, first in self._first.items():
            vectors = self._vectors[chosen.get(token, first)][1]
            for key, v in vectors.items():
                encoder, tokenizer = (
                    getattr(self.pipe, n) for n in EMBEDDING_TARGETS.get(key, ("text_encoder", "tokenizer"))
                )
                ids = tokenizer.convert_tokens_to_ids(token_names(token, v.shape[0]))
                weight = encoder.get_input_embeddings().weight
                with torch.no_grad():
                    weight[ids] = v.to(device=weight.device, dtype=weight.dtype)


__all__ = [
    "Adapter",
    "AdapterSet",
    "check_family",
    "embeddings_of",
    "is_embeddings_file",
    "load_embeddings",
    "missing_tokens",
    "parse_adapter",
    "read_embeddings",
    "run_words",
    "split_weight",
]
