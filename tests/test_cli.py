"""The command line as a user meets it: exit codes, messages, no tracebacks."""

import argparse
import dataclasses
import subprocess
import sys

import pytest

from boothkit.cli import build_parser, main
from boothkit.config import REQUIRED, SECTIONS, TrainConfig
from boothkit.flags import flag_name
from conftest import make_photos, run_cli


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("boothkit",)):
    """(command path, its parser) for every command and subcommand."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def test_every_flag_of_every_command_has_help() -> None:
    missing = [
        f"{' '.join(path)} {' '.join(a.option_strings) or a.dest}"
        for path, parser in _commands(build_parser())
        for a in parser._actions
        if not a.help and not isinstance(a, argparse._SubParsersAction)
    ]
    assert len(list(_commands(build_parser()))) >= 10  # train ... toyworld bench
    assert missing == []


def test_train_help_is_grouped_from_the_schema_and_required_flags_say_so(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: boothkit train --model MODEL --images DIR --output DIR [options]")
    headings = [
        line.rstrip(":")
        for line in text.splitlines()
        if line and not line[0].isspace() and line.endswith(":")
    ]
    assert headings[-len(SECTIONS) - 1 :] == ["required (as flags or in --config)", *SECTIONS.values()]
    for name in REQUIRED:
        assert f"--{name}" in text.split("required (as flags or in --config):")[1].split(SECTIONS["data"])[0]
    # every setting is listed under its own section
    for f in dataclasses.fields(TrainConfig):
        section = f.metadata["section"]
        if section:
            block = text.split(SECTIONS[section] + ":")[1]
            nxt = [t for t in SECTIONS.values() if t != SECTIONS[section] and t + ":" in block]
            block = block.split(nxt[0] + ":")[0] if nxt else block
            assert f"--{flag_name(f.name)}" in block, f.name


def test_help_lists_flags_from_the_config(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--rank",
        "--class-noun",
        "--no-prior",
        "--prior-weight",
        "--mixed-precision",
        "--snr-gamma",
    ):
        assert flag in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--rank", "0"], "--rank must be a positive integer"),
        (["--resolution", "100"], "--resolution must be a positive multiple of 8"),
        (["--steps", "0"], "--steps must be a positive integer"),
        (["--prior"], "prior preservation needs a class noun"),
    ],
)
def test_bad_flags_exit_2_with_a_message(capsys, tmp_path, args, needle) -> None:
    code, _, err = run_cli(
        capsys, "train", "--model", "m", "--images", str(tmp_path), "--output", str(tmp_path / "o"), *args
    )
    assert code == 2 and needle in err and "Traceback" not in err


def test_missing_and_empty_image_folders(capsys, tmp_path, tiny_model) -> None:
    model = str(tiny_model("sd1"))
    code, _, err = run_cli(
        capsys,
        "train",
        "--model",
        model,
        "--images",
        str(tmp_path / "nope"),
        "--output",
        str(tmp_path / "o"),
        "--no-prior",
    )
    assert code == 2 and "nope is not a folder" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(
        capsys,
        "train",
        "--model",
        model,
        "--images",
        str(empty),
        "--output",
        str(tmp_path / "o"),
        "--no-prior",
    )
    assert code == 2 and "no usable images" in err
    assert not (tmp_path / "o").exists()


def test_model_that_is_not_a_model(capsys, tmp_path) -> None:
    photos = make_photos(tmp_path / "p")
    notmodel = tmp_path / "notmodel"
    notmodel.mkdir()
    (notmodel / "readme.txt").write_text("x")
    code, _, err = run_cli(
        capsys,
        "train",
        "--model",
        str(notmodel),
        "--images",
        str(photos),
        "--output",
        str(tmp_path / "o"),
        "--no-prior",
        "--device",
        "cpu",
        "--resolution",
        "32",
    )
    assert code == 2 and "not a diffusers model folder" in err


def test_train_then_generate_from_the_command_line(tmp_path, tiny_model) -> None:
    """The README's two commands, as subprocesses, with a TOML config and flags overriding it."""
    photos = make_photos(tmp_path / "mittens")
    model = str(tiny_model("sd1"))
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'model = "{model}"\nclass_noun = "cat"\nsteps = 50\nresolution = 32\nclass_images = 2\n'
        'class_steps = 2\nsample_steps = 2\nsample_seeds = [0]\nsample_prompts = ["a photo of {token} cat"]\n'
    )
    out = tmp_path / "runs" / "mittens"
    env_cmd = [sys.executable, "-m", "boothkit.cli"]
    r = subprocess.run(
        [
            *env_cmd,
            "train",
            "--config",
            str(cfg),
            "--images",
            str(photos),
            "--output",
            str(out),
            "--steps",
            "3",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "done: 3 steps" in r.stdout and "boothkit generate" in r.stdout
    assert "steps = 3" in (out / "config.toml").read_text()
    r = subprocess.run(
        [
            *env_cmd,
            "generate",
            "--model",
            model,
            "--lora",
            f"{out}:0.8",
            "--prompt",
            "a photo of sks cat wearing a wizard hat",
            "--seed",
            "42",
            "--steps",
            "2",
            "--num-images",
            "2",
            "--output",
            str(tmp_path / "gen"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    files = sorted((tmp_path / "gen").glob("*.png"))
    assert [f.name for f in files] == ["00000-seed42.png", "00001-seed43.png"]
    from PIL import Image

    info = Image.open(files[0]).info
    assert "Seed: 42" in info["parameters"] and "wizard hat" in info["parameters"]


def test_generate_bad_lora_weight(capsys, tmp_path, tiny_model) -> None:
    code, _, err = run_cli(
        capsys, "generate", "--model", str(tiny_model("sd1")), "--lora", f"{tmp_path}:abc", "--prompt", "x"
    )
    assert code == 2 and "weight 'abc' is not a number" in err


def test_debug_shows_traceback(capsys, tmp_path) -> None:
    code, _, err = run_cli(
        capsys, "train", "--model", "m", "--images", "i", "--output", "o", "--rank", "0", "--debug"
    )
    assert code == 2 and "Traceback" in err


def test_export_kohya_and_back_and_merge(capsys, tmp_path, tiny_model) -> None:
    """`boothkit export`: verified conversion (0 unmapped keys) both ways, and a merged model."""
    from boothkit.config import TrainConfig
    from boothkit.train import train
    from conftest import fast_settings

    model = tiny_model("sd1")
    photos = make_photos(tmp_path / "p")
    run = train(
        TrainConfig(
            model=str(model),
            images=str(photos),
            output=str(tmp_path / "run"),
            class_noun="dog",
            train_text_encoder=True,
            **fast_settings(steps=2),
        ),
        progress=False,
        log=lambda s: None,
    ).output
    kohya = tmp_path / "kohya.safetensors"
    assert main(["export", str(run), "--format", "kohya", "--output", str(kohya)]) == 0
    out = capsys.readouterr().out
    assert kohya.is_file() and "unmapped" in out.lower()
    from safetensors import safe_open

    with safe_open(str(kohya), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert any(k.startswith("lora_unet_") for k in keys) and any(k.startswith("lora_te_") for k in keys)
    assert meta["boothkit_token"] == "sks" and meta["ss_network_dim"] == "4"
    back = tmp_path / "back.safetensors"
    assert (
        main(["export", str(kohya), "--format", "diffusers", "--output", str(back), "--model", str(model)])
        == 0
    )
    merged = tmp_path / "merged"
    assert main(["export", str(run), "--format", "merged", "--output", str(merged), "--scale", "0.5"]) == 0
    assert (merged / "model_index.json").is_file()
    assert (
        main(
            [
                "export",
                str(run),
                "--format",
                "kohya",
                "--output",
                str(tmp_path / "x.safetensors"),
                "--model",
                str(tmp_path / "nope"),
            ]
        )
        == 2
    )
