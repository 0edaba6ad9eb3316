"""Prompt fidelity of a toy model on held-out and on training-distribution captions.

The held-out figure is the one pretraining evaluates (56 captions, each with a (shape, colour)
or (shape, background) pair the model never saw); the training-distribution figure uses 56
captions drawn as training draws them (``training_scene``, its own seed), so the two together
say whether a miss is compositional generalisation or the model not having learned the world.
Both sample through boothkit's own loader (``boothkit.pipelines.open_pipeline``), as
``boothkit generate --model`` does. ``--record`` writes the figures into the folder's
``boothkit_toyworld.json``.

    python bench/toy_fidelity.py MODEL_FOLDER [--record]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from boothkit.io import atomic_write_json
from boothkit.pipelines import open_pipeline
from boothkit.toyworld import caption
from boothkit.toyworld.captions import training_scene
from boothkit.toyworld.model import evaluate_pipeline, prompt_fidelity, sample_toy_images

N, STEPS, GUIDANCE = 56, 20, 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--record", action="store_true", help="write the figures into boothkit_toyworld.json")
    args = parser.parse_args()
    pipe = open_pipeline(args.model, [])
    held_out = evaluate_pipeline(pipe, N, steps=STEPS, guidance=GUIDANCE)
    rng = random.Random(99)
    scenes = [training_scene(rng) for _ in range(N)]
    images = sample_toy_images(pipe, [caption(s) for s in scenes], steps=STEPS, guidance=GUIDANCE)
    trained = prompt_fidelity(images, scenes)
    print(f"{args.model}: held-out {held_out.format()}")
    print(f"{args.model}: training distribution {trained.format()}")
    if args.record:
        path = Path(args.model) / "boothkit_toyworld.json"
        meta = json.loads(path.read_text())
        meta.update(
            held_out_fidelity=held_out.overall,
            per_attribute=held_out.per_attribute,
            eval_images=held_out.n,
            eval_steps=STEPS,
            guidance=GUIDANCE,
            training_distribution_fidelity=trained.overall,
            training_distribution_per_attribute=trained.per_attribute,
            measured_with=f"bench/toy_fidelity.py: boothkit's loader, {N} captions, {STEPS} steps, guidance {GUIDANCE}",
        )
        atomic_write_json(path, meta)
        print(f"recorded in {path}")


if __name__ == "__main__":
    main()
