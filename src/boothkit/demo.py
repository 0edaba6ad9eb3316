"""`boothkit demo`: the whole pipeline offline, on the toy world, in a few minutes on a CPU.

It uses the toy base model that ships with boothkit (a small SD-1 pretrained on the toy world's
captions, see :mod:`boothkit.toyworld.model`) and one test subject, a multi-coloured object the
base model has never seen: it writes and checks the subject's instance photos, makes class images,
trains DreamBooth-LoRA with prior preservation, draws the subject in new contexts beside the base
model's output, and measures the result with the toy world's oracles: subject fidelity, prompt
fidelity against the base model, and leakage of the subject into its class.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from boothkit.data.images import check_folder
from boothkit.errors import BoothkitError
from boothkit.grids import labelled_grid
from boothkit.io import atomic_save_image
from boothkit.outputs import summary_text
from boothkit.pipelines import open_pipeline
from boothkit.toyworld import SUBJECTS, TEST_SUBJECTS
from boothkit.toyworld.bench import (
    CONTEXTS,
    BenchSettings,
    class_prompts,
    context_fidelity,
    context_scenes,
    flat_images,
    images_for,
    leakage,
    repeat_scenes,
    subject_fidelity,
    subject_prompts,
    train_config,
    tuned_pipeline,
    write_instance_images,
)
from boothkit.toyworld.model import RESOLUTION, shipped_model_dir
from boothkit.train import train

DEMO_SUBJECT = "target_circle"


@dataclass(frozen=True)
class DemoScores:
    subject_fidelity: float
    base_subject_fidelity: float
    prompt_fidelity: float
    base_prompt_fidelity: float
    leakage: float
    base_leakage: float

    def format(self) -> str:
        return (
            f"  subject fidelity : {self.subject_fidelity:.2f}  (base model: {self.base_subject_fidelity:.2f})\n"
            f"  prompt fidelity  : {self.prompt_fidelity:.2f}  (base model, class prompts: {self.base_prompt_fidelity:.2f})\n"
            f"  leakage          : {self.leakage:.2f}  (base model: {self.base_leakage:.2f}; lower is better)"
        )


def _free_output(base: Path) -> Path:
    if not base.exists() or not any(base.iterdir()):
        return base
    for i in range(1, 1000):
        candidate = base.with_name(f"{base.name}-{i}")
        if not candidate.exists():
            return candidate
    raise BoothkitError(f"no free output folder next to {base}")


def run_demo(
    output: str | Path = "runs/demo",
    *,
    subject: str = DEMO_SUBJECT,
    # The scores these defaults give on the shipped model are in BENCHMARKS.md.
    steps: int = 400,
    class_images: int = 100,
    seeds: tuple[int, ...] = (0, 1),
    gen_steps: int = 20,
    model: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Run the demo into a fresh folder at (or beside) ``output``; returns the run folder. Its class
    images come from the shared bank, as `boothkit train`'s do, so a second demo reuses them."""
    if subject not in SUBJECTS:
        raise BoothkitError(
            f"unknown toy-world subject {subject!r}", hint=f"try one of {', '.join(TEST_SUBJECTS)}"
        )
    if steps is not None and steps <= 0:
        raise BoothkitError(f"--steps must be a positive integer, got {steps}")
    started = time.time()
    the_subject = SUBJECTS[subject]
    model_dir = Path(model) if model else shipped_model_dir()
    if not (model_dir / "model_index.json").exists():
        raise BoothkitError(
            f"the toy base model is missing at {model_dir}", hint="boothkit toyworld pretrain"
        )
    out = _free_output(Path(output))
    out.mkdir(parents=True, exist_ok=True)

    photos = write_instance_images(the_subject, out / "instances")
    print(f"[1/5] instance photos of {subject} ({the_subject.description}) in {photos}")
    print(check_folder(photos, resolution=RESOLUTION).format())

    settings = BenchSettings(
        model=str(model_dir),
        contexts=CONTEXTS[:4],
        seeds=seeds,
        steps=steps,
        class_images=class_images,
        class_steps=gen_steps,
        gen_steps=gen_steps,
    )
    config = train_config(settings, the_subject, "lora", True, photos, out / "run", bank=None)
    print(f"[2/5] {class_images} class images of '{the_subject.shape}' from the base model {model_dir.name}/")
    print(f"[3/5] DreamBooth-LoRA with prior preservation, {steps} steps")
    result = train(config, progress=progress)

    print("[4/5] base model vs personalised model in new contexts")
    scenes = context_scenes(the_subject, settings.contexts)
    k = len(seeds)
    base = open_pipeline(str(model_dir), [])
    tuned = tuned_pipeline(str(model_dir), "lora", result.output)
    base_sks = images_for(base, subject_prompts(scenes), settings)
    base_class = images_for(base, class_prompts(scenes), settings)
    tuned_sks = images_for(tuned, subject_prompts(scenes), settings)
    tuned_class = images_for(tuned, class_prompts(scenes), settings)
    scores = DemoScores(
        subject_fidelity=subject_fidelity(flat_images(tuned_sks), the_subject),
        base_subject_fidelity=subject_fidelity(flat_images(base_sks), the_subject),
        prompt_fidelity=context_fidelity(flat_images(tuned_sks), repeat_scenes(scenes, k)),
        base_prompt_fidelity=context_fidelity(flat_images(base_class), repeat_scenes(scenes, k)),
        leakage=leakage(flat_images(tuned_class), the_subject),
        base_leakage=leakage(flat_images(base_class), the_subject),
    )
    grid = labelled_grid(
        [
            [g[0] for g in base_class],
            [g[0] for g in base_sks],
            [g[0] for g in tuned_sks],
            [g[0] for g in tuned_class],
        ],
        row_labels=[
            "base, class prompt",
            "base, sks prompt",
            "base + LoRA, sks prompt",
            "base + LoRA, class prompt",
        ],
        col_labels=[f"{size} {pos} on {bg}" for size, pos, bg in settings.contexts],
        title=f"boothkit demo: {subject} ('sks {the_subject.shape}'), seed 0",
        label_width=150,
    )
    grid_path = atomic_save_image(grid, result.output / "demo_grid.png")

    print(f"[5/5] done in {time.time() - started:.0f} s")
    print(summary_text(result, config, example_prompt=subject_prompts(scenes)[0]))
    print(scores.format())
    print(f"  demo grid : {grid_path}")
    return result.output
