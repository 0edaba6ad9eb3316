"""`boothkit generate`: seeded pixels, several adapters, parameters in the PNG, clear family mismatches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from boothkit.adapters import Adapter, parse_adapter
from boothkit.config import TrainConfig
from boothkit.errors import BoothkitError
from boothkit.generate import generate
from boothkit.pipelines import open_pipeline
from boothkit.train import train
from conftest import fast_settings


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    from conftest import make_photos

    root = tmp_path_factory.mktemp("runs")
    photos = make_photos(root / "photos")
    out = {}
    for name, family, method in (
        ("sd1", "sd1", "lora"),
        ("sd1b", "sd1", "lora"),
        ("sdxl", "sdxl", "lora"),
        ("sd1_ti", "sd1", "ti"),
    ):
        cfg = TrainConfig(
            model=str(tiny_model(family)),
            images=str(photos),
            output=str(root / name),
            class_noun="dog",
            method=method,
            **fast_settings(steps=3, seed=len(out), ti_lr=0.05),
        )  # type: ignore[arg-type]
        out[name] = train(cfg, progress=False, log=lambda s: None).output
    return out


def _pixels(paths: list[Path]) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in paths]


def test_same_arguments_same_pixels_and_metadata(tiny_model, runs, tmp_path) -> None:
    kw = {
        "adapters": [parse_adapter(f"{runs['sd1']}:0.7")],
        "seed": 5,
        "num_images": 2,
        "steps": 3,
        "scheduler": "euler_a",
        "negative": "blurry",
    }
    a = generate(str(tiny_model("sd1")), "a photo of sks dog", output=tmp_path / "a", **kw)  # type: ignore[arg-type]
    b = generate(str(tiny_model("sd1")), "a photo of sks dog", output=tmp_path / "b", **kw)  # type: ignore[arg-type]
    assert all(np.array_equal(x, y) for x, y in zip(_pixels(a), _pixels(b), strict=True))
    assert not np.array_equal(_pixels(a)[0], _pixels(a)[1])  # image k uses seed + k
    params = json.loads(Image.open(a[1]).info["boothkit"])
    assert params["seed"] == 6 and params["scheduler"] == "euler_a" and params["adapters"][0]["weight"] == 0.7
    assert "Negative prompt: blurry" in Image.open(a[0]).info["parameters"]


@pytest.mark.parametrize("scheduler", ["dpm++2m", "euler", "euler_a", "ddim", "pndm"])
def test_every_scheduler_runs(tiny_model, scheduler, tmp_path) -> None:
    paths = generate(str(tiny_model("sd1")), "a dog", steps=2, scheduler=scheduler, output=tmp_path)
    assert len(paths) == 1


def test_weight_zero_is_the_base_and_two_adapters_add(tiny_model, runs) -> None:
    import torch

    def image(adapters):
        pipe = open_pipeline(str(tiny_model("sd1")), adapters)
        return pipe(
            "a photo of sks dog",
            num_inference_steps=2,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images

    base = image([])
    assert np.array_equal(image([Adapter(runs["sd1"] / "pytorch_lora_weights.safetensors", 0.0)]), base)
    both = image([parse_adapter(f"{runs['sd1']}:0.5"), parse_adapter(f"{runs['sd1b']}:0.8")])
    one = image([parse_adapter(f"{runs['sd1']}:0.5")])
    assert not np.allclose(both, one) and not np.allclose(both, base)


def test_adapter_for_another_family_names_both(tiny_model, runs, capsys) -> None:
    from boothkit.cli import main

    with pytest.raises(
        BoothkitError, match=r"trained for SDXL \(sdxl\) but the base model is SD 1.x \(sd1\)"
    ):
        open_pipeline(str(tiny_model("sd1")), [parse_adapter(str(runs["sdxl"]))])
    assert (
        main(["generate", "--model", str(tiny_model("sdxl")), "--lora", str(runs["sd1_ti"]), "--prompt", "x"])
        == 2
    )
    err = capsys.readouterr().err
    assert "trained for SD 1.x (sd1) but the base model is SDXL (sdxl)" in err and "Traceback" not in err


def test_unknown_scheduler_and_missing_file(tiny_model, tmp_path, capsys) -> None:
    from boothkit.cli import main

    assert main(["generate", "--model", str(tiny_model("sd1")), "--prompt", "x", "--scheduler", "lms"]) == 2
    assert "--scheduler 'lms' is not known" in capsys.readouterr().err
    assert (
        main(
            [
                "generate",
                "--model",
                str(tiny_model("sd1")),
                "--prompt",
                "x",
                "--lora",
                str(tmp_path / "nope.safetensors"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_two_adapters_equal_their_merged_equivalent(tiny_model, runs, tmp_path) -> None:
    """base + LoRA a at 0.5 + LoRA b at 0.8 == (base with a merged at 0.5, then b at 0.8)."""
    import torch

    from boothkit.export import merge_lora

    def image(model, adapters):
        pipe = open_pipeline(str(model), adapters)
        return pipe(
            "a photo of sks dog",
            num_inference_steps=3,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images

    a = runs["sd1"] / "pytorch_lora_weights.safetensors"
    b = runs["sd1b"] / "pytorch_lora_weights.safetensors"
    stacked = image(tiny_model("sd1"), [Adapter(a, 0.5), Adapter(b, 0.8)])
    once = merge_lora(tiny_model("sd1"), a, scale=0.5, output=tmp_path / "m1")
    twice = merge_lora(once, b, scale=0.8, output=tmp_path / "m2")
    merged = image(twice, [])
    assert np.abs(stacked - merged).max() < 1e-3
    assert np.abs(stacked - image(tiny_model("sd1"), [])).max() > 1e-3  # not vacuous


def test_two_runs_with_the_same_token_are_refused_by_name(tiny_model, runs) -> None:
    """Two textual-inversion runs both learned <sks>: the second can't take the token, and the message
    says which file and what to do, instead of diffusers' "already in tokenizer vocabulary"."""
    ti = parse_adapter(str(runs["sd1_ti"]))
    with pytest.raises(BoothkitError, match=r"token <sks> is already taken") as info:
        open_pipeline(str(tiny_model("sd1")), [ti, ti])
    assert "learned_embeds.safetensors" in str(info.value) and "--token" in (info.value.hint or "")


@pytest.mark.parametrize(
    ("command", "size", "phrase"),
    [
        (["generate"], ["--width", "30"], "--width 30 must be a positive multiple of 8"),
        (["grid", "seeds"], ["--height", "-8"], "--height -8 must be a positive multiple of 8"),
        (["morph", "--seeds", "1", "2"], ["--width", "36"], "--width 36 must be a positive multiple of 8"),
    ],
)
def test_an_image_size_the_pipelines_refuse_gets_a_clear_message(
    tiny_model, tmp_path, capsys, command, size, phrase
) -> None:
    from boothkit.cli import main

    args = [*command, "--model", str(tiny_model("sd1")), "--prompt", "x", "--steps", "2", *size]
    code = main([*args, "--output", str(tmp_path / ("out.png" if command[0] == "grid" else "out.gif"))])
    err = capsys.readouterr().err
    assert code == 2 and phrase in err and "hint: try" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_generate_takes_a_checkpoint_folder(tiny_model, photos, tmp_path) -> None:
    """A LoRA run's checkpoint renders as the run's LoRA at that step: the last checkpoint is the final LoRA."""
    cfg = TrainConfig(
        model=str(tiny_model("sd1")),
        images=str(photos),
        output=str(tmp_path / "run"),
        class_noun="dog",
        rank=4,
        lora_alpha=8.0,  # scale 2: the checkpoint's raw tensors must be rescaled to match
        **fast_settings(steps=2, checkpoint_every=2),
    )  # type: ignore[arg-type]
    run = train(cfg, progress=False, log=lambda s: None).output
    checkpoint = parse_adapter(str(run / "checkpoints" / "step-000002"))
    kw = {"seed": 3, "steps": 2}
    a = generate(
        str(tiny_model("sd1")), "a photo of sks dog", adapters=[checkpoint], output=tmp_path / "a", **kw
    )  # type: ignore[arg-type]
    b = generate(
        str(tiny_model("sd1")),
        "a photo of sks dog",
        adapters=[parse_adapter(str(run))],
        output=tmp_path / "b",
        **kw,
    )  # type: ignore[arg-type]
    base = generate(str(tiny_model("sd1")), "a photo of sks dog", output=tmp_path / "c", **kw)  # type: ignore[arg-type]
    assert np.array_equal(_pixels(a)[0], _pixels(b)[0]) and not np.array_equal(
        _pixels(a)[0], _pixels(base)[0]
    )


def test_a_second_call_into_the_same_folder_keeps_the_first_images(tiny_model, tmp_path) -> None:
    first = generate(str(tiny_model("sd1")), "a dog", steps=2, num_images=2, output=tmp_path)
    kept = {p: p.read_bytes() for p in first}
    second = generate(str(tiny_model("sd1")), "a cat", steps=2, output=tmp_path)
    assert [p.name for p in first] == ["00000-seed0.png", "00001-seed1.png"]
    assert [p.name for p in second] == ["00002-seed0.png"]
    assert all(p.read_bytes() == data for p, data in kept.items())


def test_a_prompt_without_the_runs_token_gets_a_warning(tiny_model, runs, tmp_path, capsys) -> None:
    from boothkit.cli import main

    def warnings(prompt: str, run: Path) -> str:
        args = ["generate", "--model", str(tiny_model("sd1")), "--lora", str(run), "--prompt", prompt]
        assert main([*args, "--steps", "1", "--output", str(tmp_path), "--quiet"]) == 0
        return capsys.readouterr().err

    assert "does not name sks" in warnings("a photo of a dog", runs["sd1"])
    assert "does not name" not in warnings("a photo of sks dog", runs["sd1"])
    assert "does not name <sks>" in warnings("a photo of sks dog", runs["sd1_ti"])  # TI needs its placeholder
    assert "does not name" not in warnings("a photo of <sks> dog", runs["sd1_ti"])
