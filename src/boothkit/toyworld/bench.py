"""`boothkit toyworld bench`: DreamBooth's claims, measured on the toy world.

For each benchmark subject and method, with and without prior preservation, the bench trains on
the subject's instance photos (token "sks", class noun = the subject's shape), generates a fixed
set of prompts x seeds and scores the images with the oracles:

* subject fidelity - share of "sks" prompt images that show the subject;
* prompt fidelity - share of "sks" prompt images whose position and background match the prompt,
  beside the base model's share on the same prompts with the class noun;
* leakage - share of class-noun prompt images that show the subject (lower is better), beside
  the base model's;
* colour drift - how far the class's colour distribution moved (tuned vs base, class prompts);
* diversity - mean pairwise pixel distance between seeds of the same "sks" prompt;
* wall time of class-image generation and of training.

Results go to ``--output`` as ``bench.json``, ``bench.md`` (a Markdown table), example grids
(PNG) and ``index.html`` showing them.
"""

from __future__ import annotations

import html
import itertools
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from boothkit.adapters import parse_adapter
from boothkit.config import METHODS, TEXT_ENCODER_ATTENTION, TEXT_ENCODER_MLP, TrainConfig
from boothkit.errors import BoothkitError
from boothkit.families import LoadOptions, load_model
from boothkit.grids import labelled_grid
from boothkit.io import require_empty_folder
from boothkit.methods import get_method
from boothkit.pipelines import open_pipeline
from boothkit.prior import class_images
from boothkit.toyworld.captions import partial_caption
from boothkit.toyworld.model import RESOLUTION, sample_toy_images, shipped_model_dir
from boothkit.toyworld.oracles import colour_distribution, colour_drift, is_subject, measure
from boothkit.toyworld.scene import BACKGROUNDS, POSITIONS, SIZES, Scene, caption, check_subject_token
from boothkit.toyworld.subjects import BENCH_SUBJECTS, SUBJECTS, Subject, instance_scenes, render_subject
from boothkit.train import train

TOKEN = "sks"

# New contexts: places and backgrounds the instance photos (plain gray/pink/sky) never show.
CONTEXTS: tuple[tuple[str, str, str], ...] = (
    ("large", "top left", "grass"),
    ("large", "bottom right", "water"),
    ("large", "center", "brick"),
    ("large", "top right", "sand"),
    ("small", "left", "striped"),
    ("large", "bottom", "checkered"),
)

# Training settings per method that suit the toy model (CPU minutes, 48 px), the best measured on
# the bench (BENCHMARKS.md has the figures). Captioned photos and class images over varied contexts
# leave LoRA and pivotal tuning more to learn: they train longer at a higher rate (a higher one still
# loses the prompt, as a higher rank does). LoRA also trains a text-encoder LoRA on attention and
# MLPs, as kohya's LoRA does: the MLPs act on each token alone, the faint `sks` row's own position
# included. The full fine-tune trains the text encoder too, as in the DreamBooth paper. TI keeps its
# short default.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {
        "steps": 1200,
        "lr": 2e-3,
        "rank": 16,
        "train_text_encoder": True,
        "text_encoder_targets": TEXT_ENCODER_ATTENTION + TEXT_ENCODER_MLP,
    },
    "full": {"steps": 400, "lr": 5e-4, "train_text_encoder": True},
    "ti": {"steps": 300, "lr": 5e-3, "ti_lr": 5e-3},
    "pivotal": {"steps": 1200, "lr": 2e-3, "rank": 16, "ti_lr": 5e-3},
}


@dataclass
class BenchSettings:
    """What the bench runs; :meth:`quick` is the couple-of-minutes smoke setting."""

    model: str = ""
    subjects: tuple[str, ...] = BENCH_SUBJECTS
    methods: tuple[str, ...] = METHODS
    priors: tuple[bool, ...] = (True, False)
    contexts: tuple[tuple[str, str, str], ...] = CONTEXTS
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int | None = None  # overrides every method's default
    class_images: int = 100  # one per context drawn: the prior covers many contexts
    class_steps: int = 20
    gen_steps: int = 20
    guidance: float = 5.0
    device: str = "cpu"
    # Captioned instance photos ("a photo of a large sks star in the top left on a sky background")
    # and class images over varied contexts; False trains every photo on "a photo of a sks star" and
    # makes every class image from "a photo of a star" (the protocol that tools without per-image
    # captions can be compared on).
    captions: bool = True
    # The identifier. On the shipped model every identifier's row is a faint, untrained one, so which
    # one matters little (BENCHMARKS.md).
    token: str = TOKEN
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls, **changes: Any) -> BenchSettings:
        base = cls(
            subjects=BENCH_SUBJECTS[:1],
            methods=("lora",),
            priors=(True,),
            contexts=CONTEXTS[:3],
            seeds=(0, 1),
            steps=60,
            class_images=8,
            class_steps=10,
            gen_steps=12,
        )
        return replace(base, **changes)


@dataclass(frozen=True)
class RunScores:
    """The scores of one (subject, method, prior) run."""

    subject: str
    method: str
    prior: bool
    subject_fidelity: float
    prompt_fidelity: float
    base_prompt_fidelity: float
    leakage: float
    base_leakage: float
    colour_drift: float
    diversity: float
    base_subject_fidelity: float
    class_seconds: float
    train_seconds: float
    steps: int


# --------------------------------------------------------------------------- prompts


def context_scenes(subject: Subject, contexts: Sequence[tuple[str, str, str]]) -> list[Scene]:
    """The subject's class placed in each context (no colour: the subject or the class brings it)."""
    return [Scene(subject.shape, None, size, position, background) for size, position, background in contexts]


def subject_prompts(scenes: Sequence[Scene], token: str = TOKEN) -> list[str]:
    """'a photo of a large sks star in the top left on a grass background' per scene."""
    return [caption(s, subject_token=token) for s in scenes]


def class_prompts(scenes: Sequence[Scene]) -> list[str]:
    """The same prompts with the class noun alone: 'a photo of a large star in the top left ...'."""
    return [partial_caption(s, ("size", "position", "background")) for s in scenes]


# --------------------------------------------------------------------------- metrics (pure)


def subject_fidelity(images: Sequence[Image.Image], subject: Subject) -> float:
    """Share of images the oracle identifies as the subject."""
    return _share([is_subject(im, subject) for im in images])


def leakage(images: Sequence[Image.Image], subject: Subject) -> float:
    """Share of class-prompt images that show the subject (lower is better)."""
    return subject_fidelity(images, subject)


def context_fidelity(images: Sequence[Image.Image], scenes: Sequence[Scene]) -> float:
    """Share of images whose position and background match their scene."""
    if len(images) != len(scenes):
        raise ValueError("context_fidelity needs one scene per image")
    hits = []
    for image, scene in zip(images, scenes, strict=True):
        m = measure(image)
        hits.append(m.position == scene.position and m.background == scene.background)
    return _share(hits)


def pixel_distance(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute per-channel difference, 0 (same) .. 1."""
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    return float(np.abs(x - y).mean() / 255.0)


def diversity(groups: Sequence[Sequence[Image.Image]]) -> float:
    """Mean pairwise pixel distance within each group (one prompt, several seeds), averaged."""
    values = [pixel_distance(a, b) for g in groups for a, b in itertools.combinations(g, 2)]
    return float(np.mean(values)) if values else 0.0


def _share(flags: Sequence[bool]) -> float:
    return float(np.mean(flags)) if flags else 0.0


# --------------------------------------------------------------------------- running


def images_for(pipe: Any, prompts: Sequence[str], settings: BenchSettings) -> list[list[Image.Image]]:
    """Per prompt, its images for every seed (the same seeds for every model)."""
    per_seed = [
        sample_toy_images(
            pipe,
            prompts,
            seed=1000 * seed,
            steps=settings.gen_steps,
            guidance=settings.guidance,
            resolution=RESOLUTION,
        )
        for seed in settings.seeds
    ]
    return [[per_seed[j][i] for j in range(len(settings.seeds))] for i in range(len(prompts))]


def flat_images(groups: Sequence[Sequence[Image.Image]]) -> list[Image.Image]:
    return [im for g in groups for im in g]


def repeat_scenes(scenes: Sequence[Scene], k: int) -> list[Scene]:
    return [s for s in scenes for _ in range(k)]


def write_instance_images(subject: Subject, folder: Path, n: int = 5, *, captions: bool = True) -> Path:
    """The subject's instance photos as PNG files in ``folder``, each with a caption sidecar.

    The caption names what else is in the photo, as a person captions their photos ("a photo of a
    large {token} star in the top left on a sky background"), so the token is left with the subject's
    look alone instead of also absorbing the photos' plain backgrounds and positions.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(instance_scenes(subject, n)):
        render_subject(subject, scene, seed=i).save(folder / f"{subject.name}_{i}.png")  # = instance_images
        if captions:
            (folder / f"{subject.name}_{i}.txt").write_text(caption(scene, subject_token="{token}") + "\n")
    return folder


def class_context_prompts(shape: str, n: int, seed: int = 0) -> tuple[str, ...]:
    """n class prompts over random contexts ("a photo of a small star on the left on a grass background").

    Captioned instance photos put the class noun in contexts, so the prior loss has to hold the
    class noun in contexts too; drawn from the whole world (any size, position, background), not
    from the bench's test contexts.
    """
    rng = random.Random(seed)
    return tuple(
        partial_caption(
            Scene(shape, None, rng.choice(SIZES), rng.choice(POSITIONS), rng.choice(BACKGROUNDS)),
            ("size", "position", "background"),
        )
        for _ in range(n)
    )


def train_config(
    settings: BenchSettings,
    subject: Subject,
    method: str,
    prior: bool,
    images: Path,
    output: Path,
    bank: Path | None,
) -> TrainConfig:
    """The TrainConfig of one bench run (class images in ``bank``, or the shared bank when None)."""
    values: dict[str, Any] = dict(
        model=settings.model,
        images=str(images),
        output=str(output),
        token=settings.token,
        class_noun=subject.shape,
        method=method,
        instance_prompt="a photo of a {token} {class_noun}",
        class_prompt="a photo of a {class_noun}",
        class_prompts=class_context_prompts(subject.shape, settings.class_images)
        if settings.captions
        else (),
        resolution=RESOLUTION,
        prior=prior,
        class_images=settings.class_images,
        class_steps=settings.class_steps,
        class_guidance=settings.guidance,
        class_batch_size=16,
        bank_dir=str(bank) if bank else None,
        sample_prompts=("a photo of a {token} {class_noun}",),
        sample_seeds=(0,),
        sample_steps=settings.gen_steps,
        sample_every=0,
        device=settings.device,
        flip=False,
    )
    values.update(METHOD_DEFAULTS[method])
    if settings.steps is not None:
        values["steps"] = settings.steps
    values.update(settings.overrides)  # any TrainConfig field, the settings above included
    return TrainConfig(**values)


def tuned_pipeline(model: str, method: str, run_dir: Path, device: str = "cpu") -> Any:
    """The base model with a run's result applied (a full fine-tune is a model of its own)."""
    if get_method(method).standalone:
        return open_pipeline(str(run_dir), device=device)
    return open_pipeline(model, [parse_adapter(str(run_dir))], device=device)


def run_bench(
    output: str | Path,
    settings: BenchSettings,
    *,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> list[RunScores]:
    """Run every configured (subject, method, prior) and write the reports into ``output``."""
    try:
        check_subject_token(settings.token)
    except ValueError as e:
        raise BoothkitError(
            f"--token {settings.token!r}: {e}", hint="pick a rare word such as sks or ohwx"
        ) from e
    unknown = [name for name in settings.subjects if name not in SUBJECTS]
    if unknown:
        raise BoothkitError(
            f"--subjects: no toy-world subject {', '.join(map(repr, unknown))}",
            hint=f"benchmark subjects: {', '.join(BENCH_SUBJECTS)}; test subjects: "
            + ", ".join(n for n in SUBJECTS if n not in BENCH_SUBJECTS),
        )
    if settings.steps is not None and settings.steps <= 0:
        raise BoothkitError(f"--steps must be a positive integer, got {settings.steps}")
    if not settings.seeds:
        raise BoothkitError("--seeds must be a positive integer")
    if settings.class_images < 0:
        raise BoothkitError(f"--class-images must be >= 0, got {settings.class_images}")
    model = settings.model or str(shipped_model_dir())
    settings = replace(settings, model=model)
    out = require_empty_folder(
        output, "--output", hint="the bench writes its runs, images and tables into a new folder"
    )
    out.mkdir(parents=True, exist_ok=True)
    bank = out / "class_bank"
    base = open_pipeline(model, [], device=settings.device)
    results: list[RunScores] = []
    class_seconds: dict[str, float] = {}
    for name in settings.subjects:
        subject = SUBJECTS[name]
        scenes = context_scenes(subject, settings.contexts)
        k = len(settings.seeds)
        s_prompts, c_prompts = subject_prompts(scenes, settings.token), class_prompts(scenes)
        base_subject = images_for(base, s_prompts, settings)
        base_class = images_for(base, c_prompts, settings)
        base_prompt_fid = context_fidelity(flat_images(base_class), repeat_scenes(scenes, k))
        base_leak = leakage(flat_images(base_class), subject)
        base_subject_fid = subject_fidelity(flat_images(base_subject), subject)
        base_colours = colour_distribution(flat_images(base_class))
        images = write_instance_images(subject, out / "instances" / name, captions=settings.captions)
        log(f"{name}: base prompt fidelity {base_prompt_fid:.2f}, base leakage {base_leak:.2f}")
        for method, prior in itertools.product(settings.methods, settings.priors):
            tag = f"{name}-{method}-{'prior' if prior else 'noprior'}"
            run_dir = out / "runs" / tag
            config = train_config(settings, subject, method, prior, images, run_dir, bank)
            if prior and subject.shape not in class_seconds:
                t0 = time.time()
                family = load_model(model, LoadOptions(device=settings.device))
                class_images(config, family, RESOLUTION, progress=progress)
                class_seconds[subject.shape] = time.time() - t0
            t0 = time.time()
            result = train(config, progress=progress, log=lambda _line: None)
            train_seconds = time.time() - t0
            tuned = tuned_pipeline(model, method, result.output, settings.device)
            tuned_subject = images_for(
                tuned, subject_prompts(scenes, get_method(method).identifier(settings.token)), settings
            )
            tuned_class = images_for(tuned, c_prompts, settings)
            scores = RunScores(
                subject=name,
                method=method,
                prior=prior,
                subject_fidelity=subject_fidelity(flat_images(tuned_subject), subject),
                prompt_fidelity=context_fidelity(flat_images(tuned_subject), repeat_scenes(scenes, k)),
                base_prompt_fidelity=base_prompt_fid,
                leakage=leakage(flat_images(tuned_class), subject),
                base_leakage=base_leak,
                colour_drift=colour_drift(base_colours, colour_distribution(flat_images(tuned_class))),
                diversity=diversity(tuned_subject),
                base_subject_fidelity=base_subject_fid,
                class_seconds=class_seconds.get(subject.shape, 0.0) if prior else 0.0,
                train_seconds=train_seconds,
                steps=config.steps,
            )
            results.append(scores)
            log(format_row(scores))
            rows = [
                [g[0] for g in base_class],
                [g[0] for g in tuned_subject],
                [g[0] for g in tuned_class],
            ]
            grid = labelled_grid(
                rows,
                row_labels=["base: class prompt", "tuned: sks prompt", "tuned: class prompt"],
                col_labels=[f"{sz} {pos} / {bg}" for sz, pos, bg in settings.contexts],
                title=tag,
                label_width=130,
            )
            (out / "grids").mkdir(exist_ok=True)
            grid.save(out / "grids" / f"{tag}.png")
            write_reports(out, results, settings)
    return results


# --------------------------------------------------------------------------- reports

HEADER = (
    "| subject | method | prior | subject fidelity | prompt fidelity (base) | leakage (base) "
    "| colour drift | diversity | class images s | training s |"
)


def format_row(r: RunScores) -> str:
    return (
        f"| {r.subject} | {r.method} | {'yes' if r.prior else 'no'} | {r.subject_fidelity:.2f} "
        f"| {r.prompt_fidelity:.2f} ({r.base_prompt_fidelity:.2f}) | {r.leakage:.2f} ({r.base_leakage:.2f}) "
        f"| {r.colour_drift:.3f} | {r.diversity:.3f} | {r.class_seconds:.0f} | {r.train_seconds:.0f} |"
    )


def markdown_table(results: Sequence[RunScores]) -> str:
    sep = "|" + "---|" * (HEADER.count("|") - 1)
    return "\n".join([HEADER, sep, *(format_row(r) for r in results)]) + "\n"


def write_reports(out: Path, results: Sequence[RunScores], settings: BenchSettings) -> None:
    """bench.json, bench.md and index.html in ``out``."""
    payload = {"settings": _jsonable(asdict(settings)), "results": [asdict(r) for r in results]}
    (out / "bench.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "bench.md").write_text(markdown_table(results))
    cells = "".join(
        f"<h3>{html.escape(t)}</h3><img src='grids/{html.escape(t)}.png'>"
        for t in (f"{r.subject}-{r.method}-{'prior' if r.prior else 'noprior'}" for r in results)
    )
    table = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|")) + "</tr>"
        for line in markdown_table(results).splitlines()
        if not line.startswith("|---")
    )
    (out / "index.html").write_text(
        f"<!doctype html><meta charset='utf-8'><title>boothkit toyworld bench</title>"
        f"<h1>boothkit toyworld bench</h1><table border=1>{table}</table>{cells}\n"
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
