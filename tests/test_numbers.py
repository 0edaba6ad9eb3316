"""Every number a command takes is finite and in its range, refused by name before any work.

The table of non-finite values is generated from the parsers and the schemas, so a new float flag
or setting is covered without being listed here.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from boothkit.adapters import split_weight
from boothkit.cli import build_parser, main
from boothkit.config import TrainConfig, build_config, load_toml
from boothkit.errors import BoothkitError
from boothkit.flags import Number, flag_name, number_fields
from boothkit.toyworld.settings import PretrainSettings
from test_cli import _commands

NON_FINITE = ("nan", "inf", "-inf")
SCHEMAS = (TrainConfig, PretrainSettings)
REQUIRED = {"model": "m", "images": "i", "output": "o", "prior": False}

# The least each command needs besides the number under test (nothing here exists: the refusal
# must come before anything is read or written). A new command with a float flag needs a line.
MINIMAL: dict[tuple[str, ...], list[str]] = {
    ("train",): ["--model", "{tmp}/model", "--images", "{tmp}/photos", "--output", "{tmp}/out"],
    ("generate",): ["--model", "{tmp}/model", "--prompt", "x", "--output", "{tmp}/out"],
    ("grid",): ["guidance", "--model", "{tmp}/model", "--prompt", "x", "--output", "{tmp}/out/g.png"],
    ("morph",): ["--model", "{tmp}/model", "--prompt", "x", "--output", "{tmp}/out/m.gif"],
    ("export",): ["{tmp}/run", "--format", "merged", "--output", "{tmp}/out"],
    ("toyworld", "pretrain"): ["--output", "{tmp}/out"],
    ("toyworld", "refine-decoder"): ["--model", "{tmp}/model"],
}


def _float_flags() -> list[tuple[tuple[str, ...], str, Number | None]]:
    """(command, flag, its type) for every float flag of every command (type float fails a test below)."""
    found = []
    for path, parser in _commands(build_parser()):
        for action in parser._actions:
            kind = action.type
            if kind is float or (isinstance(kind, Number) and not kind.integer):
                found.append((path[1:], action.option_strings[-1], kind if kind is not float else None))
    return found


FLOAT_FLAGS = _float_flags()
CLI_CASES = [(command, flag, value) for command, flag, _ in FLOAT_FLAGS for value in NON_FINITE]
SCHEMA_CASES = [
    (schema, f.name, value)
    for schema in SCHEMAS
    for f, number, _ in number_fields(schema)
    if not number.integer
    for value in NON_FINITE
]


def _run(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    """``boothkit ARGS`` in this process: (exit code, stderr), whether argparse or the command refused."""
    try:
        code = main(args)
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def _refusal(value: str) -> str:
    return "nan is not a number" if value == "nan" else f"{value} is not finite"


def test_the_table_covers_every_float_flag_and_setting() -> None:
    flags = {(" ".join(command), flag) for command, flag, _ in FLOAT_FLAGS}
    expected = {
        ("train", "--lr"),
        ("train", "--lora-alpha"),
        ("generate", "--guidance"),
        ("grid", "--values"),
        ("morph", "--fps"),
        ("export", "--scale"),
        ("toyworld pretrain", "--max-minutes"),
        ("toyworld refine-decoder", "--object-weight"),
    }
    assert expected <= flags
    assert {command for command, _, _ in FLOAT_FLAGS} <= set(MINIMAL)
    assert len(FLOAT_FLAGS) >= 30
    assert {name for _, name, _ in SCHEMA_CASES} >= {"lr", "lora_alpha", "snr_gamma", "max_minutes"}


def test_every_float_flag_parses_with_the_finite_checking_type() -> None:
    assert [(c, f) for c, f, kind in FLOAT_FLAGS if kind is None] == []


@pytest.mark.parametrize(
    ("command", "flag", "value"), CLI_CASES, ids=[f"{' '.join(c)} {f}={v}" for c, f, v in CLI_CASES]
)
def test_a_non_finite_flag_is_refused_by_name_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: tuple[str, ...], flag: str, value: str
) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in MINIMAL[command]]
    code, err = _run(capsys, [*command, *args, f"{flag}={value}"])
    assert code == 2, err
    assert flag in err and _refusal(value) in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    ("schema", "name", "value"),
    SCHEMA_CASES,
    ids=[f"{s.__name__}.{n}={v}" for s, n, v in SCHEMA_CASES],
)
def test_a_non_finite_setting_is_refused_by_name(schema: type, name: str, value: str) -> None:
    extra = REQUIRED if schema is TrainConfig else {}
    with pytest.raises(BoothkitError, match=re.escape(f"--{flag_name(name)} {_refusal(value)}")):
        schema(**extra, **{name: float(value)})


@pytest.mark.parametrize("value", NON_FINITE)
def test_a_non_finite_toml_value_is_refused_like_the_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, value: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'model = "m"\nimages = "i"\noutput = "{tmp_path / "out"}"\nlr = {value}\n')
    with pytest.raises(BoothkitError, match=re.escape(f"--lr {_refusal(value)}")):
        build_config(load_toml(config), {})
    code, err = _run(capsys, ["train", "--config", str(config)])
    assert code == 2 and f"--lr {_refusal(value)}; give a finite value, e.g. 0.0001" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (
            ["generate", "--prompt", "x", "--guidance", "-1"],
            "argument --guidance: must be >= 0, got -1 (e.g. 7.5)",
        ),
        (["grid", "guidance", "--values", "3", "-1"], "argument --values: must be >= 0, got -1 (e.g. 7.5)"),
        (
            ["morph", "--prompt", "x", "--fps", "0"],
            "argument --fps: must be a positive number, got 0 (e.g. 30)",
        ),
        (
            ["generate", "--prompt", "x", "--lora", "{tmp}/run:nan"],
            "weight nan is not a number; give a finite value",
        ),
        (
            ["morph", "--prompt", "x", "--lora", "{tmp}/run:-inf"],
            "weight -inf is not finite; give a finite value",
        ),
    ],
)
def test_nonsense_sampling_numbers_are_refused_before_the_model_loads(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], phrase: str
) -> None:
    """A negative guidance used to turn guidance off, and a LoRA at weight nan drew black images."""
    output = "{tmp}/out/x.png" if args[0] == "grid" else "{tmp}/out/x.gif"
    args = [*args, "--model", "{tmp}/model", "--output", output]
    code, err = _run(capsys, [a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2 and phrase in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_lora_weight_may_be_negative_but_not_infinite() -> None:
    assert split_weight("style.safetensors:-0.5") == ("style.safetensors", -0.5)
    with pytest.raises(BoothkitError, match=r"--lora 'run:inf': weight inf is not finite") as info:
        split_weight("run:inf")
    assert info.value.hint == "write it as PATH:0.8"


def _out_of_range(number: Number) -> list[float]:
    low = number.at_least if number.at_least is not None else number.above
    high = number.at_most if number.at_most is not None else number.below
    return [v for v in (number.above, number.below) if v is not None] + [
        *([low - 1] if low is not None else []),
        *([high + 1] if high is not None else []),
    ]


def _example(text: str) -> float:
    found = re.search(r"\(e\.g\. (\S+)\)", text)
    assert found, text
    return float(found.group(1))


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
def test_a_setting_out_of_range_is_refused_with_a_real_value_to_use(schema: type) -> None:
    extra = REQUIRED if schema is TrainConfig else {}
    ranged = [(f, n, d) for f, n, d in number_fields(schema) if n.what() != "a finite number"]
    assert len(ranged) >= (20 if schema is TrainConfig else 10)
    for f, number, default in ranged:
        assert default is None or number.within(default), f.name
        assert number.example is None or number.within(number.example), f.name
        for bad in _out_of_range(number):
            with pytest.raises(BoothkitError, match=f"--{flag_name(f.name)} must be ") as info:
                schema(**extra, **{f.name: bad})
            assert number.within(_example(info.value.message)), info.value.message


def test_a_flag_out_of_range_is_refused_with_a_real_value_to_use() -> None:
    ranged = [
        (command, action.option_strings[-1], action.type)
        for command, parser in _commands(build_parser())
        for action in parser._actions
        if isinstance(action.type, Number) and action.type.what() != "a finite number"
    ]
    assert {flag for _, flag, _ in ranged} >= {"--guidance", "--values", "--fps", "--duration", "--lr"}
    for command, flag, number in ranged:
        for bad in _out_of_range(number):
            with pytest.raises(argparse.ArgumentTypeError, match="must be ") as info:
                number(str(int(bad) if number.integer else bad))
            assert number.within(_example(str(info.value))), (command, flag)


def test_the_range_reads_as_words() -> None:
    assert Number(above=0).what() == "a positive number"
    assert Number(above=0, integer=True).what() == "a positive integer"
    assert Number(at_least=0).what() == ">= 0"
    assert Number(at_least=0, at_most=1).what() == "between 0 and 1"
    assert Number(at_least=0, below=1).what() == "in [0, 1)"
    assert Number(above=0, below=1).what() == "in (0, 1)"
    with pytest.raises(argparse.ArgumentTypeError, match=r"'x' is not a number \(e\.g\. 7\.5\)"):
        Number(at_least=0, example=7.5)("x")
