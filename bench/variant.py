"""One bench configuration on chosen subjects, with any TrainConfig field overridden.

    OMP_NUM_THREADS=1 python bench/variant.py OUT split_star,emblem_heart [method=lora] [prior=yes|no|both]
        [captions=true|false] [class_images=100] [seeds=2] [model=FOLDER] [token=sks] [steps=1200 lr=0.002 rank=16 ...]

Settings of the bench itself (method, prior, captions, class_images, seeds, model, token) and TrainConfig fields
(everything else, values as JSON: `train_text_encoder=true`, `target_modules=["to_q","conv1"]`) go
on the command line as key=value. Writes the usual bench.json, bench.md and grids into OUT. The
variants measured with it are in BENCHMARKS.md.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from typing import Any

from boothkit.toyworld.bench import BenchSettings, run_bench

BENCH_KEYS = ("method", "prior", "captions", "class_images", "seeds", "model", "token")


def parse(pairs: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(bench settings, TrainConfig overrides) from key=value pairs."""
    bench: dict[str, Any] = {"method": "lora", "prior": "yes", "seeds": 2}
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if isinstance(value, list):
            value = tuple(value)  # TrainConfig's list fields are tuples
        (bench if key in BENCH_KEYS else overrides)[key] = value
    return bench, overrides


def main() -> None:
    out, subjects = sys.argv[1], tuple(sys.argv[2].split(","))
    bench, overrides = parse(sys.argv[3:])
    settings = replace(
        BenchSettings(),
        subjects=subjects,
        methods=(bench["method"],),
        priors={"yes": (True,), "no": (False,), "both": (True, False)}[bench["prior"]],
        seeds=tuple(range(int(bench["seeds"]))),
        overrides=overrides,
    )
    if "captions" in bench:
        settings = replace(settings, captions=bool(bench["captions"]))
    if "model" in bench:
        settings = replace(settings, model=str(bench["model"]))
    if "token" in bench:
        settings = replace(settings, token=str(bench["token"]))
    if "class_images" in bench:
        settings = replace(settings, class_images=int(bench["class_images"]))
    run_bench(out, settings)


if __name__ == "__main__":
    main()
