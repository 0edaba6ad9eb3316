"""Does a toy model's caption decide where the object goes? The x0 prediction at the pure-noise step.

Sampling starts from pure noise; with the zero-snr schedule the model's x0 prediction there,
-v(x_T, 999, caption), is the mean image it expects for the caption, and the first DDIM step
builds on it. This script decodes that prediction (averaged over 8 noise draws) for a large red
circle at each of the nine positions, splits the decoded image into the caption's 3x3 grid and
reports the cell where it is reddest: 9/9 when the caption alone places the object, about 1/9
when the layout is left to the noise.

    python bench/layout_probe.py MODEL_FOLDER
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from boothkit.toyworld.model import RESOLUTION, caption_ids, load_components
from boothkit.toyworld.scene import POSITION_PHRASES, POSITIONS


@torch.no_grad()
def redness_maps(folder: str, draws: int = 8, seed: int = 1) -> dict[str, torch.Tensor]:
    """Per position word: the 3x3 mean redness of the decoded x0 prediction at t=999."""
    c = load_components(folder)
    unet, text, vae, sched = c["unet"].eval(), c["text_encoder"].eval(), c["vae"], c["scheduler"]
    if sched.config.prediction_type != "v_prediction":
        raise SystemExit(f"{folder}: an epsilon model has no x0 prediction at zero SNR (schedule 'sd')")
    captions = [
        f"a photo of a large red circle {POSITION_PHRASES[p]} on a plain gray background" for p in POSITIONS
    ]
    hidden = text(caption_ids(c["tokenizer"], captions))[0]
    noise = torch.randn(
        draws, 4, RESOLUTION // 2, RESOLUTION // 2, generator=torch.Generator().manual_seed(seed)
    )
    t = torch.full((draws,), 999)
    maps = {}
    for i, position in enumerate(POSITIONS):
        x0 = -unet(noise, t, hidden[i : i + 1].expand(draws, -1, -1)).sample  # v = -x0 at zero SNR
        image = vae.decode(x0 / vae.config.scaling_factor).sample.mean(0)
        red = image[0] - 0.5 * (image[1] + image[2])
        maps[position] = F.adaptive_avg_pool2d(red[None, None], 3)[0, 0]
    return maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    args = parser.parse_args()
    maps = redness_maps(args.model)
    hits = 0
    for i, (position, cells) in enumerate(maps.items()):
        best = int(cells.flatten().argmax())
        hits += best == i
        grid = " / ".join(" ".join(f"{v:+.2f}" for v in row) for row in cells.tolist())
        print(f"{position:>12}: reddest cell {POSITIONS[best]:<12} [{grid}]")
    print(f"{args.model}: caption places the object {hits}/9")


if __name__ == "__main__":
    main()
