"""The bench's metrics on synthetic images, a short DreamBooth run, and a tiny end-to-end bench."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from boothkit.toyworld import SUBJECTS, TEST_SUBJECTS, Scene, render, render_subject
from boothkit.toyworld.bench import (
    CONTEXTS,
    TOKEN,
    BenchSettings,
    RunScores,
    class_prompts,
    context_fidelity,
    context_scenes,
    diversity,
    leakage,
    markdown_table,
    pixel_distance,
    subject_fidelity,
    subject_prompts,
)
from conftest import assert_refused

SUBJECT = SUBJECTS[TEST_SUBJECTS[0]]


def _subject_images(scenes: list[Scene]) -> list[Image.Image]:
    return [render_subject(SUBJECT, s, size=32, seed=i) for i, s in enumerate(scenes)]


def test_prompts_name_the_token_or_the_class_only() -> None:
    scenes = context_scenes(SUBJECT, CONTEXTS[:2])
    assert subject_prompts(scenes) == [
        "a photo of a large sks circle in the top left on a grass background",
        "a photo of a large sks circle in the bottom right on a water background",
    ]
    assert class_prompts(scenes)[0] == "a photo of a large circle in the top left on a grass background"


def test_subject_fidelity_and_leakage_on_renders() -> None:
    scenes = context_scenes(SUBJECT, CONTEXTS)
    subject_images = _subject_images(scenes)
    plain = [render(Scene(s.shape, "red", s.size, s.position, s.background), size=32) for s in scenes]
    assert subject_fidelity(subject_images, SUBJECT) == 1.0
    assert subject_fidelity(plain, SUBJECT) == 0.0
    assert leakage(subject_images[:3] + plain[3:], SUBJECT) == 0.5


def test_context_fidelity_checks_position_and_background() -> None:
    scenes = context_scenes(SUBJECT, CONTEXTS)
    images = _subject_images(scenes)
    assert context_fidelity(images, scenes) == 1.0
    assert context_fidelity(images[1:] + images[:1], scenes) == 0.0


def test_diversity_is_zero_for_copies_and_grows_with_difference() -> None:
    a = Image.new("RGB", (8, 8), (0, 0, 0))
    b = Image.new("RGB", (8, 8), (255, 255, 255))
    assert pixel_distance(a, b) == 1.0
    assert diversity([[a, a], [b, b]]) == 0.0
    assert diversity([[a, b], [a, a]]) == 0.5
    assert diversity([[a]]) == 0.0


def test_markdown_table_has_one_row_per_run() -> None:
    scores = RunScores("s", "lora", True, 0.9, 0.8, 0.85, 0.02, 0.0, 0.01, 0.2, 0.0, 5.0, 60.0, 300)
    table = markdown_table([scores, scores])
    lines = table.strip().splitlines()
    assert len(lines) == 4 and lines[1].startswith("|---")
    assert "| s | lora | yes | 0.90 | 0.80 (0.85) | 0.02 (0.00) |" in lines[2]


def test_dreambooth_lora_raises_the_subject_score_above_the_base_model(tmp_path: Path) -> None:
    """LoRA with prior preservation at the bench's defaults on the shipped model: the "sks" prompts'
    images look like the test subject (oracle score, 0..1) far more than the base model's do.

    The prompts are the instance prompt and one plain-background context, the photos' own kind of
    scene, 4 seeds each: single images score anywhere from 0 to 0.8, so the test averages 8 (the base
    model's mean is about 0.01). New contexts are the bench's figure, not this test's (BENCHMARKS.md:
    subject fidelity follows how much of each subject the VAE keeps)."""
    import numpy as np

    from boothkit.pipelines import open_pipeline
    from boothkit.toyworld.bench import (
        flat_images,
        images_for,
        train_config,
        tuned_pipeline,
        write_instance_images,
    )
    from boothkit.toyworld.model import shipped_model_dir
    from boothkit.toyworld.oracles import subject_score
    from boothkit.toyworld.scene import subject_prompt
    from boothkit.train import train

    model = str(shipped_model_dir())
    settings = BenchSettings(model=model, contexts=CONTEXTS[:3], seeds=(0, 1, 2, 3), class_images=24)
    images = write_instance_images(SUBJECT, tmp_path / "photos")
    config = train_config(settings, SUBJECT, "lora", True, images, tmp_path / "run", tmp_path / "bank")
    result = train(config, progress=False, log=lambda _line: None)
    plain = context_scenes(SUBJECT, [("large", "center", "gray")])
    prompts = [subject_prompt(TOKEN, SUBJECT.shape), *subject_prompts(plain)]
    base = flat_images(images_for(open_pipeline(model, []), prompts, settings))
    tuned = flat_images(images_for(tuned_pipeline(model, "lora", result.output), prompts, settings))
    base_score = float(np.mean([subject_score(im, SUBJECT) for im in base]))
    tuned_score = float(np.mean([subject_score(im, SUBJECT) for im in tuned]))
    assert tuned_score > base_score + 0.1, (base_score, tuned_score)
    assert subject_fidelity(tuned, SUBJECT) > subject_fidelity(base, SUBJECT)


def test_bench_quick_end_to_end_through_the_cli(tmp_path: Path) -> None:
    from boothkit.cli import main

    out = tmp_path / "bench"
    code = main(
        [
            "toyworld",
            "bench",
            "--quick",
            "--quiet",
            "--output",
            str(out),
            "--steps",
            "2",
            "--seeds",
            "1",
            "--class-images",
            "2",
            "--token",
            "ohwx",
        ]
    )
    assert code == 0
    payload = json.loads((out / "bench.json").read_text())
    assert payload["settings"]["token"] == "ohwx"
    assert 'token = "ohwx"' in next((out / "runs").glob("*/config.toml")).read_text()
    assert [(r["method"], r["prior"]) for r in payload["results"]] == [("lora", True)]
    assert (out / "bench.md").read_text().count("\n") == 3
    assert (out / "index.html").exists() and list((out / "grids").glob("*.png"))


def test_instance_photos_are_captioned_with_their_context_and_class_prompts_vary_it(tmp_path: Path) -> None:
    from boothkit.data.captions import instance_prompts
    from boothkit.toyworld.bench import class_context_prompts, train_config, write_instance_images
    from boothkit.toyworld.scene import parse_caption, parse_subject_token
    from boothkit.toyworld.subjects import instance_scenes

    folder = write_instance_images(SUBJECT, tmp_path / "photos")
    photos = sorted(folder.glob("*.png"))
    prompts = instance_prompts(photos, folder, template="unused", token=TOKEN, class_noun=SUBJECT.shape)
    # Each photo's caption is its own scene, with the token where a colour word would be.
    assert [parse_caption(p) for p in prompts] == instance_scenes(SUBJECT, len(photos))
    assert {parse_subject_token(p) for p in prompts} == {TOKEN}

    class_prompts_ = class_context_prompts(SUBJECT.shape, 40)
    assert len(class_prompts_) == 40 and class_prompts_ == class_context_prompts(SUBJECT.shape, 40)
    parsed = [parse_caption(p.replace(" circle ", " red circle ")) for p in class_prompts_]
    assert {s.shape for s in parsed} == {SUBJECT.shape}
    assert len({(s.size, s.position, s.background) for s in parsed}) > 20
    settings = BenchSettings(model="m", class_images=40)
    config = train_config(settings, SUBJECT, "lora", True, folder, tmp_path / "r", tmp_path / "b")
    assert config.class_prompts == class_prompts_

    # The old protocol: no captions, one class prompt.
    plain = write_instance_images(SUBJECT, tmp_path / "plain", captions=False)
    assert not list(plain.glob("*.txt"))
    off = BenchSettings(model="m", captions=False)
    assert train_config(off, SUBJECT, "lora", True, plain, tmp_path / "r", tmp_path / "b").class_prompts == ()


def test_bench_refuses_a_token_the_captions_cannot_hold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from boothkit.cli import main

    for token in ("", "star", "two words"):
        assert main(["toyworld", "bench", "--quick", "--output", str(tmp_path / "b"), "--token", token]) == 2
        err = capsys.readouterr().err
        assert f"--token {token!r}" in err and "Traceback" not in err and "report it" not in err
    assert not (tmp_path / "b").exists()  # refused before anything was written


def test_bench_refuses_a_non_empty_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from boothkit.cli import main

    (tmp_path / "notes.md").write_text("mine")
    assert main(["toyworld", "bench", "--quick", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not an empty folder" in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.md"]


def test_full_and_lora_train_the_text_encoder_and_overrides_win(tmp_path: Path) -> None:
    from boothkit.toyworld.bench import train_config

    def config(settings: BenchSettings, method: str) -> Any:
        return train_config(settings, SUBJECT, method, True, tmp_path, tmp_path / "r", tmp_path / "b")

    assert config(BenchSettings(model="m"), "full").train_text_encoder  # as in the DreamBooth paper
    lora = config(BenchSettings(model="m"), "lora")  # as kohya's LoRA: attention and MLPs
    assert lora.train_text_encoder and {"fc1", "fc2", "q_proj"} <= set(lora.text_encoder_targets)
    assert not config(BenchSettings(model="m"), "pivotal").train_text_encoder  # it learns the embedding
    off = BenchSettings(model="m", overrides={"train_text_encoder": False})
    assert not config(off, "full").train_text_encoder and not config(off, "lora").train_text_encoder
    assert config(BenchSettings(model="m", token="ohwx"), "lora").token == "ohwx"


def test_textual_inversion_runs_are_prompted_with_their_placeholder() -> None:
    # TI and pivotal learn "<sks>"; prompting them with "sks" would leave the learned embedding unused
    # (TI then scores 0.00: BENCHMARKS.md).
    from boothkit.methods import get_method

    def word(method: str) -> str:
        return get_method(method).identifier(TOKEN)

    assert word("ti") == word("pivotal") == "<sks>" and word("lora") == word("full") == TOKEN
    scenes = context_scenes(SUBJECT, CONTEXTS[:1])
    assert subject_prompts(scenes, word("ti")) == [
        "a photo of a large <sks> circle in the top left on a grass background"
    ]


@pytest.mark.parametrize(
    ("flags", "phrase"),
    [
        (["--subjects", "nope"], "no toy-world subject 'nope'"),
        (["--steps", "0"], "--steps must be a positive integer"),
        (["--seeds", "0"], "--seeds must be a positive integer"),
    ],
)
def test_bench_refuses_bad_settings_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], phrase: str
) -> None:
    err = assert_refused(capsys, ["toyworld", "bench", "--output", str(tmp_path / "b"), *flags], phrase)
    assert "report it" not in err
    assert not (tmp_path / "b").exists()
