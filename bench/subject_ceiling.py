"""How much of a subject survives the toy model's VAE: the ceiling on what DreamBooth can learn.

A DreamBooth run learns the subject in the VAE's latent space, so its images can show the subject
no better than the VAE's reconstruction of a render of it. For each subject, this renders it at
both sizes in the bench's contexts (48 px, the toy model's resolution), encodes and decodes it with
the model's VAE, and reports the subject oracle's pass rate (``is_subject``) and mean score on the
renders and on their reconstructions.

    python bench/subject_ceiling.py [--model MODEL_FOLDER] [--subjects NAME ...]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from boothkit.toyworld.bench import CONTEXTS, context_scenes
from boothkit.toyworld.model import RESOLUTION, load_vae, shipped_model_dir, to_images, to_tensor
from boothkit.toyworld.oracles import is_subject, subject_score
from boothkit.toyworld.scene import SIZES, Scene
from boothkit.toyworld.subjects import BENCH_SUBJECTS, SUBJECTS, render_subject


@torch.no_grad()
def round_trip(vae: torch.nn.Module, images: list[Image.Image]) -> list[Image.Image]:
    """The VAE's reconstruction (posterior mean) of each image."""
    return to_images(vae.decode(vae.encode(to_tensor(images)).latent_dist.mean).sample)  # type: ignore[operator]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(shipped_model_dir()))
    parser.add_argument("--subjects", nargs="+", default=list(BENCH_SUBJECTS), choices=sorted(SUBJECTS))
    args = parser.parse_args()
    vae = load_vae(args.model)
    print("| subject | size | renders: pass / mean score | VAE round trip: pass / mean score |")
    print("|---|---|---|---|")
    for name in args.subjects:
        subject = SUBJECTS[name]
        for size in SIZES:
            scenes = [
                Scene(s.shape, None, size, s.position, s.background)
                for s in context_scenes(subject, CONTEXTS)
            ]
            renders = [render_subject(subject, s, RESOLUTION, seed=i) for i, s in enumerate(scenes)]
            rebuilt = round_trip(vae, renders)
            cells = []
            for images in (renders, rebuilt):
                passed = np.mean([is_subject(im, subject) for im in images])
                score = np.mean([subject_score(im, subject) for im in images])
                cells.append(f"{passed:.2f} / {score:.2f}")
            print(f"| {name} | {size} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
