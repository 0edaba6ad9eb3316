"""Study grids: one labelled PNG that answers one question about a model or a LoRA.

Every grid changes one thing along its rows and columns and holds everything else fixed, so the
differences you see come from that one thing:

  guidance  the guidance scale (columns) at fixed prompt and seed(s) (rows)
  seeds     one prompt over many seeds: how much of the result is the seed
  styles    the subject in artistic styles: does the identity survive a change of style?
  prompts   a prompt file (plain, or the DreamBooth dataset's `prompts_and_classes.txt`) x seeds
  compare   models and LoRAs (rows) over prompts (columns) at fixed seeds
  token     the same prompt with and without the identifier token: what the token adds

Each cell is rendered on its own with `torch.Generator("cpu").manual_seed(seed)`, the way
`boothkit generate` draws image k from seed + k, so a cell can be reproduced with `generate` and a
grid is pixel-identical when rendered again with the same arguments. LoRAs are loaded into the
pipeline once and switched per cell with `set_adapters`, so comparing weights of the same LoRA
costs no reloading.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from tqdm.auto import tqdm

from boothkit.adapters import Adapter, parse_adapter, run_words
from boothkit.errors import BoothkitError
from boothkit.grids import labelled_grid
from boothkit.io import atomic_save_image
from boothkit.pipelines import Sampler, check_scheduler
from boothkit.prompt_files import load_prompts
from boothkit.templates import render_prompt

KINDS = ("guidance", "seeds", "styles", "prompts", "compare", "token")
DEFAULT_GUIDANCE = (1.5, 3.0, 7.5, 12.0, 20.0)
DEFAULT_STYLES = (
    "oil painting",
    "watercolor",
    "pencil sketch",
    "anime",
    "pixel art",
    "Van Gogh",
    "Art Nouveau poster",
    "Ukiyo-e woodblock print",
    "3D render",
)
# "<subject prompt>, <style> style" keeps the subject prompt intact and first (CLIP weighs early
# tokens most), and reads naturally for media ("watercolor style") and artists ("Van Gogh style").
STYLE_TEMPLATE = "{prompt}, {style} style"
TOKEN_PROMPT = "a photo of {token} {class_noun}"
# How many seeds a kind uses when neither --seeds nor --num-seeds is given.
DEFAULT_NUM_SEEDS = {"seeds": 8, "token": 4}


# ----------------------------------------------------------------------------- what a grid is made of


@dataclass(frozen=True)
class Sampling:
    """The settings every cell of a grid shares (guidance is per cell: the guidance study varies it)."""

    negative: str = ""
    steps: int = 30
    guidance: float | None = None  # None: the model's own default
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class Cell:
    """Everything that decides one image of a grid besides the shared `Sampling`."""

    prompt: str
    seed: int
    guidance: float
    adapters: tuple[Adapter, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "seed": self.seed,
            "guidance": self.guidance,
            "adapters": [{"path": str(a.path), "weight": a.weight} for a in self.adapters],
        }


@dataclass
class Study:
    """A rendered study: the labelled grid, the cell images, and what each cell was made from."""

    kind: str
    title: str
    row_labels: list[str]
    col_labels: list[str]
    cells: list[list[Cell]]
    images: list[list[Image.Image]]
    grid: Image.Image
    settings: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        """What the PNG carries: enough to re-render any cell with `boothkit generate`."""
        return {
            "kind": self.kind,
            "title": self.title,
            "rows": self.row_labels,
            "columns": self.col_labels,
            "cells": [[c.to_json() for c in row] for row in self.cells],
            **self.settings,
        }

    def save(self, path: str | Path) -> Path:
        """Write the grid atomically as PNG with its parameters in text chunks."""
        dest = Path(path).expanduser()
        if dest.suffix.lower() != ".png":
            raise BoothkitError(
                f"--output {path}: a study grid is saved as PNG", hint="give the file a .png name"
            )
        return atomic_save_image(self.grid, dest, pnginfo=png_grid_info(self))


def png_grid_info(study: Study) -> Any:
    """PNG text chunks: a readable `parameters` summary and boothkit's full JSON under `boothkit`."""
    s = study.settings
    summary = (
        f"boothkit {study.kind} study: {study.title}\n"
        f"Rows: {' | '.join(study.row_labels)}\nColumns: {' | '.join(study.col_labels)}\n"
        f"Negative prompt: {s.get('negative', '')}\n"
        f"Steps: {s.get('steps')}, Sampler: {s.get('scheduler')}, "
        f"Size: {s.get('width')}x{s.get('height')}, Model: {s.get('model')}"
    )
    info = PngInfo()
    info.add_text("parameters", summary)
    info.add_text("boothkit", json.dumps(study.metadata(), sort_keys=True))
    return info


# ----------------------------------------------------------------------------- rendering


class Renderer:
    """A base model that renders cells, switching adapters in place instead of reloading: each distinct
    file is loaded once, and a cell activates its own set with its weights (:class:`Sampler`)."""

    def __init__(self, sampler: Sampler, *, model_label: str | None = None) -> None:
        self.sampler = sampler
        self.family = sampler.family
        self.pipe = sampler.pipe
        self.model_label = model_label or sampler.family.source.spec

    @classmethod
    def load(
        cls,
        model: str,
        *,
        scheduler: str | None = None,
        device: str = "cpu",
        allow_pickle: bool = False,
        model_config: str | None = None,
    ) -> Renderer:
        return cls(
            Sampler.open(
                model,
                scheduler=scheduler,
                device=device,
                allow_pickle=allow_pickle,
                model_config=model_config,
            )
        )

    def size(self, sampling: Sampling) -> tuple[int, int]:
        return self.sampler.size(sampling.width, sampling.height)

    def settings(self, sampling: Sampling) -> dict[str, Any]:
        width, height = self.size(sampling)
        return {
            "model": self.model_label,
            "family": self.family.name,
            "scheduler": self.sampler.scheduler,
            "steps": sampling.steps,
            "negative": sampling.negative,
            "width": width,
            "height": height,
        }

    def render(self, cell: Cell, sampling: Sampling) -> Image.Image:
        pipe = self.sampler.use(cell.adapters, cell.prompt)
        width, height = self.size(sampling)
        with torch.no_grad():
            image = pipe(
                cell.prompt,
                negative_prompt=sampling.negative or None,
                num_inference_steps=sampling.steps,
                guidance_scale=cell.guidance,
                width=width,
                height=height,
                generator=torch.Generator("cpu").manual_seed(cell.seed),
            ).images[0]
        return image  # type: ignore[no-any-return]


def render_study(
    renderer: Renderer,
    kind: str,
    title: str,
    cells: list[list[Cell]],
    row_labels: list[str],
    col_labels: list[str],
    sampling: Sampling,
    *,
    progress: bool = False,
) -> Study:
    """Render every cell (in row order, each from its own seed) and lay them out with labels."""
    if sampling.steps <= 0:
        raise BoothkitError(f"--steps {sampling.steps}: the number of steps must be positive")
    total = sum(len(r) for r in cells)
    images: list[list[Image.Image]] = []
    with tqdm(total=total, disable=not progress, unit="image", desc=f"{kind} grid") as bar:
        for row in cells:
            images.append([])
            for cell in row:
                images[-1].append(renderer.render(cell, sampling))
                bar.update(1)
    grid = labelled_grid(images, row_labels=row_labels, col_labels=col_labels, title=title)
    return Study(kind, title, row_labels, col_labels, cells, images, grid, renderer.settings(sampling))


# ----------------------------------------------------------------------------- one function per kind


def _seed_label(seed: int) -> str:
    return f"seed {seed}"


def guidance_study(
    renderer: Renderer,
    prompt: str,
    *,
    values: Sequence[float] = DEFAULT_GUIDANCE,
    seeds: Sequence[int] = (0,),
    adapters: Sequence[Adapter] = (),
    sampling: Sampling = Sampling(),
    progress: bool = False,
) -> Study:
    """Columns: guidance scales; rows: seeds. Low guidance drifts from the prompt, high burns colours."""
    values = _nonempty(values, "--values")
    for g in values:
        if g < 0:
            raise BoothkitError(
                f"--values: guidance scale {g} is negative", hint="use values like 1.5 3 7.5 12"
            )
    cells = [[Cell(prompt, s, float(g), tuple(adapters)) for g in values] for s in _nonempty(seeds, "seeds")]
    return render_study(
        renderer,
        "guidance",
        f"guidance scale: {prompt}",
        cells,
        [_seed_label(s) for s in seeds],
        [f"guidance {g:g}" for g in values],
        sampling,
        progress=progress,
    )


def seeds_study(
    renderer: Renderer,
    prompt: str,
    *,
    seeds: Sequence[int],
    adapters: Sequence[Adapter] = (),
    sampling: Sampling = Sampling(),
    progress: bool = False,
) -> Study:
    """One row, one column per seed: what varies here is only the starting noise."""
    seeds = _nonempty(seeds, "seeds")
    cells = [[Cell(prompt, s, renderer.sampler.guidance(sampling.guidance), tuple(adapters)) for s in seeds]]
    return render_study(
        renderer,
        "seeds",
        f"{len(seeds)} seeds: {prompt}",
        cells,
        [prompt],
        [_seed_label(s) for s in seeds],
        sampling,
        progress=progress,
    )


def style_prompt(prompt: str, style: str, template: str = STYLE_TEMPLATE) -> str:
    """`template` with {prompt} and {style} filled in (plain replacement: prompts may hold braces)."""
    return template.replace("{prompt}", prompt).replace("{style}", style)


def styles_study(
    renderer: Renderer,
    prompt: str,
    *,
    styles: Sequence[str] = DEFAULT_STYLES,
    template: str = STYLE_TEMPLATE,
    seeds: Sequence[int] = (0,),
    adapters: Sequence[Adapter] = (),
    sampling: Sampling = Sampling(),
    progress: bool = False,
) -> Study:
    """Columns: styles; rows: seeds. A well-trained subject keeps its identity across styles."""
    styles = _nonempty(styles, "--styles")
    if "{style}" not in template or "{prompt}" not in template:
        raise BoothkitError(
            f"--style-template {template!r} must contain both {{prompt}} and {{style}}",
            hint=f"for example {STYLE_TEMPLATE!r}",
        )
    cells = [
        [
            Cell(
                style_prompt(prompt, st, template),
                s,
                renderer.sampler.guidance(sampling.guidance),
                tuple(adapters),
            )
            for st in styles
        ]
        for s in _nonempty(seeds, "seeds")
    ]
    return render_study(
        renderer,
        "styles",
        f"styles: {style_prompt(prompt, '<style>', template)}",
        cells,
        [_seed_label(s) for s in seeds],
        list(styles),
        sampling,
        progress=progress,
    )


def prompts_study(
    renderer: Renderer,
    prompts: Sequence[str],
    *,
    seeds: Sequence[int] = (0,),
    adapters: Sequence[Adapter] = (),
    sampling: Sampling = Sampling(),
    title: str = "prompts",
    progress: bool = False,
) -> Study:
    """Rows: prompts (a prompt file is long, rows keep the labels readable); columns: seeds."""
    prompts = _nonempty(prompts, "prompts")
    seeds = _nonempty(seeds, "seeds")
    cells = [
        [Cell(p, s, renderer.sampler.guidance(sampling.guidance), tuple(adapters)) for s in seeds]
        for p in prompts
    ]
    return render_study(
        renderer,
        "prompts",
        title,
        cells,
        list(prompts),
        [_seed_label(s) for s in seeds],
        sampling,
        progress=progress,
    )


@dataclass(frozen=True)
class Row:
    """A row of a compare study: a label and the LoRAs on top of the base model (none = base)."""

    label: str
    adapters: tuple[Adapter, ...] = ()


def compare_study(
    renderer: Renderer,
    rows: Sequence[Row],
    prompts: Sequence[str],
    *,
    seeds: Sequence[int] = (0,),
    sampling: Sampling = Sampling(),
    progress: bool = False,
) -> Study:
    """Rows: models; columns: prompts (x seeds). Same prompt, seed and settings down each column,
    so a difference between rows is the model's doing."""
    rows = _nonempty(rows, "--row")
    prompts = _nonempty(prompts, "prompts")
    seeds = _nonempty(seeds, "seeds")
    columns = [(p, s) for p in prompts for s in seeds]
    labels = [p if len(seeds) == 1 else f"{p} ({_seed_label(s)})" for p, s in columns]
    cells = [
        [Cell(p, s, renderer.sampler.guidance(sampling.guidance), r.adapters) for p, s in columns]
        for r in rows
    ]
    return render_study(
        renderer,
        "compare",
        "same prompts and seeds, different models",
        cells,
        [r.label for r in rows],
        labels,
        sampling,
        progress=progress,
    )


def _tidy(text: str) -> str:
    """Collapse the gap a removed word leaves: double spaces, a space before punctuation."""
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\s+([,.;:!?])", r"\1", text)


def token_prompts(template: str, *, token: str, class_noun: str | None) -> tuple[str, str]:
    """(with token, without token) for a prompt that has `{token}` or the token word itself."""
    if "{token}" in template:
        with_token = render_prompt(template, token=token, class_noun=class_noun)
        without = render_prompt(template.replace("{token}", ""), token=token, class_noun=class_noun)
        return _tidy(with_token), _tidy(without)
    rendered = render_prompt(template, token=token, class_noun=class_noun)
    pattern = re.compile(rf"(?<!\w){re.escape(token)}(?!\w)")
    if not pattern.search(rendered):
        raise BoothkitError(
            f"prompt {rendered!r} does not contain the token {token!r}",
            hint="write {token} where the identifier goes, e.g. 'a photo of {token} {class_noun}', or pass --token",
        )
    return _tidy(rendered), _tidy(pattern.sub("", rendered))


def token_study(
    renderer: Renderer,
    prompt: str = TOKEN_PROMPT,
    *,
    token: str = "sks",
    class_noun: str | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3),
    adapters: Sequence[Adapter] = (),
    sampling: Sampling = Sampling(),
    progress: bool = False,
) -> Study:
    """Rows: with / without the identifier; columns: seeds. If both rows look alike the token has
    not learned the subject; if 'without' also shows the subject, the class has drifted."""
    with_token, without = token_prompts(prompt, token=token, class_noun=class_noun)
    seeds = _nonempty(seeds, "seeds")
    cells = [
        [Cell(p, s, renderer.sampler.guidance(sampling.guidance), tuple(adapters)) for s in seeds]
        for p in (with_token, without)
    ]
    return render_study(
        renderer,
        "token",
        f"what {token!r} adds",
        cells,
        [f"with token: {with_token}", f"without token: {without}"],
        [_seed_label(s) for s in seeds],
        sampling,
        progress=progress,
    )


def _nonempty(values: Sequence[Any], what: str) -> list[Any]:
    if not values:
        raise BoothkitError(f"{what}: nothing to put in the grid", hint="give at least one value")
    return list(values)


# ----------------------------------------------------------------------------- adapters, rows, checkpoints


def parse_row(text: str, *, allow_pickle: bool = False) -> Row:
    """`LABEL=SPEC`, SPEC being `base` or adapter specs joined by `+` (`runs/a:0.5+style.safetensors`)."""
    label, sep, spec = text.partition("=")
    if not sep:
        label, spec = text, text
    label, spec = label.strip(), spec.strip()
    if not spec:
        raise BoothkitError(f"--row {text!r} has no model after '='", hint="e.g. --row 'LoRA 0.5=runs/a:0.5'")
    if spec.lower() == "base":
        return Row(label or "base")
    # A path that exists is one adapter even if its name holds a '+'.
    parts = [spec] if Path(spec).expanduser().exists() else [p.strip() for p in spec.split("+")]
    if not all(parts):
        raise BoothkitError(f"--row {text!r}: an empty adapter between '+' signs")
    return Row(label or spec, tuple(parse_adapter(p, allow_pickle=allow_pickle) for p in parts))


# ----------------------------------------------------------------------------- one entry point for the CLI


@dataclass
class StudyRequest:
    """Everything `boothkit grid` can be asked, checked before the model loads."""

    kind: str
    model: str
    loras: Sequence[str] = ()
    prompts: Sequence[str] = ()
    prompts_file: str | None = None
    prompt_set: str | None = None
    rows: Sequence[str] = ()
    token: str | None = None  # None: the runs' own token when they agree, else sks
    class_noun: str | None = None  # None: the runs' own class noun when they agree
    seed: int = 0
    seeds: Sequence[int] | None = None
    num_seeds: int | None = None
    values: Sequence[float] | None = None
    styles: Sequence[str] | None = None
    style_template: str = STYLE_TEMPLATE
    sampling: Sampling = Sampling()
    scheduler: str | None = None
    device: str = "cpu"
    allow_pickle: bool = False
    model_config: str | None = None  # a single-file --model's configs: diffusers folder or hub id


def resolve_seeds(kind: str, seed: int, seeds: Sequence[int] | None, num_seeds: int | None) -> list[int]:
    """`--seeds` as given, else `--num-seeds` (default per kind) consecutive seeds from `--seed`."""
    if seeds:
        return list(seeds)
    n = num_seeds if num_seeds is not None else DEFAULT_NUM_SEEDS.get(kind, 1)
    if n <= 0:
        raise BoothkitError(f"--num-seeds {n}: must be at least 1")
    return list(range(seed, seed + n))


def run_study(request: StudyRequest, *, renderer: Renderer | None = None, progress: bool = False) -> Study:
    """Check the request, load the model (unless a renderer is given) and render the study."""
    r = request
    if r.kind not in KINDS:
        raise BoothkitError(f"unknown grid kind {r.kind!r}", hint=f"choose one of {', '.join(KINDS)}")
    check_scheduler(r.scheduler)
    if r.sampling.steps <= 0:
        raise BoothkitError(f"--steps {r.sampling.steps}: the number of steps must be positive")
    seeds = resolve_seeds(r.kind, r.seed, r.seeds, r.num_seeds)
    adapters = tuple(parse_adapter(s, allow_pickle=r.allow_pickle) for s in r.loras)
    rows = [parse_row(t, allow_pickle=r.allow_pickle) for t in r.rows]
    run_token, run_noun = run_words([*adapters, *(a for row in rows for a in row.adapters)])
    token, class_noun = r.token or run_token or "sks", r.class_noun or run_noun
    prompts = [render_prompt(p, token=token, class_noun=class_noun) for p in r.prompts]
    title = ""
    if r.kind == "compare" and adapters:
        raise BoothkitError(
            "compare takes its models from --row, not --lora", hint="e.g. --row 'mine=runs/a'"
        )
    if r.kind in ("prompts", "compare") and r.prompts_file:
        chosen, from_file = load_prompts(
            r.prompts_file, token=token, class_noun=class_noun, prompt_set=r.prompt_set
        )
        prompts += from_file
        title = f"{(chosen.heading or 'prompts').lower()} ({len(from_file)})"
    elif r.prompts_file:
        raise BoothkitError(f"--prompts-file is for the prompts and compare grids, not {r.kind}")
    if r.kind == "compare" and not rows:
        raise BoothkitError("compare needs rows", hint="e.g. --row base=base --row 'LoRA=runs/a:1.0'")
    if r.kind in ("guidance", "seeds", "styles") and len(prompts) != 1:
        raise BoothkitError(f"the {r.kind} grid takes exactly one --prompt (got {len(prompts)})")
    if r.kind in ("prompts", "compare") and not prompts:
        raise BoothkitError(
            f"the {r.kind} grid needs prompts", hint="pass --prompt (repeatable) or --prompts-file"
        )
    if r.kind == "token" and len(r.prompts) > 1:
        raise BoothkitError(f"the token grid takes one --prompt (got {len(r.prompts)})")

    renderer = renderer or Renderer.load(
        r.model,
        scheduler=r.scheduler,
        device=r.device,
        allow_pickle=r.allow_pickle,
        model_config=r.model_config,
    )
    common: dict[str, Any] = {"sampling": r.sampling, "progress": progress}
    if r.kind == "guidance":
        return guidance_study(
            renderer,
            prompts[0],
            values=r.values or DEFAULT_GUIDANCE,
            seeds=seeds,
            adapters=adapters,
            **common,
        )
    if r.kind == "seeds":
        return seeds_study(renderer, prompts[0], seeds=seeds, adapters=adapters, **common)
    if r.kind == "styles":
        return styles_study(
            renderer,
            prompts[0],
            styles=r.styles or DEFAULT_STYLES,
            template=r.style_template,
            seeds=seeds,
            adapters=adapters,
            **common,
        )
    if r.kind == "prompts":
        return prompts_study(
            renderer,
            prompts,
            seeds=seeds,
            adapters=adapters,
            title=title or f"{len(prompts)} prompts",
            **common,
        )
    if r.kind == "compare":
        return compare_study(renderer, rows, prompts, seeds=seeds, **common)
    return token_study(
        renderer,
        r.prompts[0] if r.prompts else TOKEN_PROMPT,
        token=token,
        class_noun=class_noun,
        seeds=seeds,
        adapters=adapters,
        **common,
    )


__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_STYLES",
    "KINDS",
    "STYLE_TEMPLATE",
    "Cell",
    "Renderer",
    "Row",
    "Sampling",
    "Study",
    "StudyRequest",
    "compare_study",
    "guidance_study",
    "parse_row",
    "prompts_study",
    "run_study",
    "seeds_study",
    "styles_study",
    "token_prompts",
    "token_study",
]
