"""The LoRA bench with captioned instance photos: each photo's `.txt` names its size, position, background.

    OMP_NUM_THREADS=1 python bench/caption_variant.py OUT split_triangle,split_star [--plain]

Runs LoRA with prior at the bench defaults, 2 seeds, on the given subjects. `--plain` writes no
captions (the bench as shipped), for a same-run comparison. Results in BENCHMARKS.md.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import boothkit.toyworld.bench as bench
from boothkit.toyworld.scene import caption
from boothkit.toyworld.subjects import Subject, instance_images, instance_scenes


def captioned_instances(subject: Subject, folder: Path, n: int = 5) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (image, scene) in enumerate(
        zip(instance_images(subject, n=n), instance_scenes(subject, n), strict=True)
    ):
        image.save(folder / f"{subject.name}_{i}.png")
        (folder / f"{subject.name}_{i}.txt").write_text(caption(scene, subject_token="{token}"))
    return folder


def main() -> None:
    out, subjects = sys.argv[1], tuple(sys.argv[2].split(","))
    if "--plain" not in sys.argv:
        bench.write_instance_images = captioned_instances
    settings = replace(
        bench.BenchSettings(), subjects=subjects, methods=("lora",), priors=(True,), seeds=(0, 1)
    )
    bench.run_bench(out, settings)


if __name__ == "__main__":
    main()
