"""The shipped toy model's recipe as one command: ``boothkit toyworld pretrain --curriculum v4``.

A curriculum is a sequence of pretraining phases; each continues the previous phase's folder with
a fresh optimizer, and its fields replace the command line's settings. The minute limits are
those of the CPU runs that made the shipped model (a GPU reaches the step counts first), so a
rebuild equals it up to random-number streams and where the limits fall. BENCHMARKS.md has each
phase's figures, and the shipped ``pretrain_log.txt`` its log.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from boothkit.io import require_empty_folder
from boothkit.toyworld.pretrain import pretrain
from boothkit.toyworld.settings import PretrainSettings

Phases = tuple[tuple[str, dict[str, Any]], ...]

# What the phases after C share: the zero-snr schedule, a quarter of each batch at the pure-noise
# step (t=999), where only the caption shows the layout, and a fresh pool of 16,000 renders.
_LATE: dict[str, Any] = {
    "schedule": "zero-snr",
    "high_noise_share": 0.25,
    "high_noise_from": 999,
    "pool": 16000,
}

# 40% of the objects multi-coloured, 60% of those one of 24 named individuals, a look per name: the
# model learns that a word before the shape can carry a look, which DreamBooth asks of "sks".
_INDIVIDUALS: dict[str, Any] = {
    **_LATE,
    "seed": 5,
    "lr": 5e-4,
    "steps": 6000,
    "max_minutes": 30.0,
    "eval_every": 500,
    "multicolor_share": 0.4,
    "named_share": 0.6,
    "individuals": 24,
    "keep": "last",
}

V4: Phases = (
    # SD's schedule and epsilon target from scratch: shapes, colours and backgrounds; then the
    # decoder alone.
    ("v1", {"steps": 12000, "max_minutes": 80.0, "eval_every": 500, "decoder_steps": 1400}),
    # The zero-snr schedule (v target, trailing steps) on those weights.
    ("A", {"schedule": "zero-snr", "pool": 16000, "steps": 1000, "eval_every": 500}),
    # The pure-noise step alone, raw weights, the last state kept: the caption learns to place the object.
    (
        "C",
        {
            **_LATE,
            "high_noise_share": 1.0,
            "pool": 2000,
            "steps": 1000,
            "eval_every": 1000,
            "keep": "last",
            "ema_decay": 0.0,
        },
    ),
    # Half the batch at t=999, half uniform: colour and background come back.
    (
        "D",
        {
            **_LATE,
            "high_noise_share": 0.5,
            "pool": 4000,
            "steps": 4000,
            "max_minutes": 25.0,
            "eval_every": 250,
        },
    ),
    # A quarter at t=999: shape recovers.
    ("E", {**_LATE, "seed": 1, "steps": 4000, "max_minutes": 20.0, "eval_every": 250}),
    # The same at half the learning rate; then the decoder with half its objects multi-coloured, so
    # that it keeps a subject's colour regions apart.
    (
        "F",
        {
            **_LATE,
            "seed": 2,
            "lr": 5e-4,
            "steps": 4000,
            "max_minutes": 15.0,
            "eval_every": 250,
            "decoder_steps": 1200,
            "decoder_multicolor_share": 0.5,
        },
    ),
    # A quarter of the objects multi-coloured, captioned without a colour word.
    (
        "G",
        {
            **_LATE,
            "seed": 3,
            "lr": 5e-4,
            "steps": 4000,
            "max_minutes": 20.0,
            "eval_every": 250,
            "multicolor_share": 0.25,
        },
    ),
    ("I", _INDIVIDUALS),
    ("J", {**_INDIVIDUALS, "seed": 6}),
)

# The recorded curricula by name (`--curriculum`): the shipped model's recipe.
CURRICULA: dict[str, Phases] = {"v4": V4}


def pretrain_curriculum(
    output: str | Path,
    phases: Sequence[tuple[str, dict[str, Any]]],
    settings: PretrainSettings | None = None,
    *,
    log: Callable[[str], None] = print,
) -> Path:
    """Run ``phases`` in sequence, each continuing the previous one's folder, into ``output``.

    ``settings`` holds what every phase shares (device, threads, batch size, ...); a phase's fields
    replace it. With ``settings.init_from`` set, the first phase continues from that folder, else it
    starts from scratch. The phases are written under ``.OUTPUT.phases/`` beside ``output``; the
    last one becomes ``output`` with every phase's log in its ``pretrain_log.txt``, and the phase
    folders are removed.
    """
    import shutil

    from boothkit.errors import BoothkitError

    base = settings or PretrainSettings()
    out = require_empty_folder(output, "--output", hint="a curriculum writes a new model folder")
    known = {f.name for f in dataclasses.fields(PretrainSettings)}
    for name, fields in phases:
        if set(fields) - known:
            raise BoothkitError(f"curriculum phase {name!r}: unknown settings {sorted(set(fields) - known)}")
    work = out.parent / f".{out.name}.phases"
    work.mkdir(parents=True, exist_ok=True)
    previous = base.init_from
    logs: list[str] = []
    for i, (name, fields) in enumerate(phases):
        # After the first phase the VAE comes with the previous folder (--vae-from would replace it).
        vae_from = base.vae_from if i == 0 else ""
        phase = dataclasses.replace(base, **{**fields, "init_from": previous, "vae_from": vae_from})
        folder = work / name
        if folder.exists():  # left by an interrupted curriculum
            shutil.rmtree(folder)
        log(f"phase {name}: {json.dumps(fields)}" + (f" from {previous}" if previous else ""))
        pretrain(folder, phase, log=log)
        logs.append(f"# Phase {name}: {json.dumps(fields)}\n" + (folder / "pretrain_log.txt").read_text())
        previous = str(folder)
    last = Path(previous)
    (last / "pretrain_log.txt").write_text("\n".join(logs))
    if out.exists():
        out.rmdir()  # empty (checked above)
    last.replace(out)  # the phase folders sit beside ``out``: one rename on the same filesystem
    shutil.rmtree(work)
    log(f"curriculum done: {', '.join(n for n, _ in phases)} -> {out}")
    return out


__all__ = ["CURRICULA", "V4", "pretrain_curriculum"]
