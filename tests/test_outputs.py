"""What a run shows a person: the closing lines, summary.json, the loss curve, progress bars."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from boothkit.config import TrainConfig
from boothkit.outputs import RunLogger, running_mean, smoothing_window, summary_text
from boothkit.run import TrainResult
from conftest import fast_settings, run_cli


def test_running_mean_and_the_final_loss_average_the_last_steps(tmp_path: Path) -> None:
    assert running_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert running_mean([2.0, 4.0], 5) == [2.0, 3.0]
    logger = RunLogger(tmp_path)
    for step in range(1, 101):
        logger.scalars(step, loss=float(step))
    logger.scalars(101, skipped=1.0)  # a skipped step logs no loss
    logger.close()
    loss, window = logger.final_loss()
    assert window == smoothing_window(100) == 10
    assert loss == pytest.approx(sum(range(91, 101)) / 10)  # not the last step's 100
    assert smoothing_window(3) == 3 and smoothing_window(1000) == 50 and smoothing_window(0) == 1


def test_the_loss_curve_is_a_picture_of_the_logged_steps(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path)
    for step in range(1, 41):
        logger.scalars(step, loss=1 / step, instance_loss=0.5 / step, prior_loss=0.5 / step)
    logger.close()
    image = Image.open(logger.plot(tmp_path / "loss.png"))
    assert image.size == (800, 450)
    empty = RunLogger(tmp_path / "empty")
    empty.close()
    assert Image.open(empty.plot(tmp_path / "empty.png")).size == (800, 450)


def test_closing_lines_separate_class_images_and_smooth_the_loss() -> None:
    config = TrainConfig(model="base", images="i", output="runs/x", class_noun="dog")
    result = TrainResult(Path("runs/x"), [], 500, 100.0, 0.12345, class_image_seconds=40.0, loss_window=25)
    first = summary_text(result, config).splitlines()[1]
    assert first == (
        "done: 500 steps in 100.0 s (class images 40.0 s, training 60.0 s), "
        "final loss 0.1235 (mean of the last 25 steps)"
    )


def test_summary_paths_are_absolute_and_quiet_hides_every_bar(
    tiny_model, photos, tmp_path, capsys, monkeypatch
) -> None:
    """summary.json names every file by its absolute path; --quiet shows no progress bar, the class
    images' included, and without it the bars show."""
    monkeypatch.chdir(tmp_path)
    model = tiny_model("sd1")
    capsys.readouterr()  # what building the tiny model printed
    args = ["train", "--model", str(model), "--images", "photos", "--class-noun", "dog"]
    args += ["--steps", "2", "--resolution", "32", "--class-images", "2", "--class-steps", "2"]
    args += ["--sample-steps", "2", "--sample-seeds", "0", "--device", "cpu"]
    code, out, err = run_cli(capsys, *args, "--output", "runs/quiet", "--quiet")
    assert code == 0, err
    assert "class images" not in err and "training:" not in err and "%|" not in err
    assert "(class images " in out and "final loss" in out

    summary = json.loads((tmp_path / "runs/quiet/summary.json").read_text())
    paths = [*summary["instance_images"], *summary["weights"], *summary["samples"], summary["loss_curve"]]
    assert paths and all(Path(p).is_absolute() and Path(p).exists() for p in paths)
    assert summary["class_image_seconds"] >= 0 and summary["final_loss_steps"] >= 1
    assert math.isfinite(summary["final_loss"])

    code, _, err = run_cli(capsys, *args, "--output", "runs/loud", "--bank-dir", str(tmp_path / "bank"))
    assert code == 0 and "class images" in err and "training" in err


def test_generate_shows_its_progress_unless_quiet(tiny_model, tmp_path, capsys) -> None:
    base = ["generate", "--model", str(tiny_model("sd1")), "--prompt", "a photo of a dog", "--steps", "2"]
    capsys.readouterr()
    code, _, err = run_cli(capsys, *base, "--output", str(tmp_path / "a"))
    assert code == 0 and "generating" in err
    code, _, err = run_cli(capsys, *base, "--output", str(tmp_path / "b"), "--quiet")
    assert code == 0 and "generating" not in err


def test_fast_settings_still_fit_the_schema() -> None:
    TrainConfig(model="m", images="i", output="o", class_noun="dog", **fast_settings())  # type: ignore[arg-type]
