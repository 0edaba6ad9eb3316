import re
from pathlib import Path

import pytest

from boothkit.config import TrainConfig, build_config, load_toml, to_toml
from boothkit.errors import BoothkitError

REQ = {"model": "m", "images": "i", "output": "o"}


def test_defaults_and_prior_follows_class_noun() -> None:
    assert build_config({}, {**REQ, "class_noun": "dog"}).uses_prior
    assert not build_config({}, REQ).uses_prior  # no class noun: prior off by default


def test_flags_override_file(tmp_path: Path) -> None:
    f = tmp_path / "run.toml"
    f.write_text('model = "from-file"\nrank = 8\nlr = 0.001\nclass-noun = "cat"\nsample_seeds = [1, 2]\n')
    values = load_toml(f)
    cfg = build_config(values, {"images": "i", "output": "o", "rank": 16})
    assert cfg.model == "from-file" and cfg.rank == 16 and cfg.lr == 0.001 and cfg.class_noun == "cat"
    assert cfg.sample_seeds == (1, 2)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = build_config({}, {**REQ, "class_noun": "dog", "rank": 8, "target_modules": ("to_q", "to_v")})
    f = tmp_path / "config.toml"
    f.write_text(to_toml(cfg))
    assert build_config(load_toml(f), {}) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rank": 0}, "--rank must be a positive integer"),
        ({"resolution": 500}, "--resolution must be a positive multiple of 8, got 500"),
        ({"steps": 0}, "--steps must be a positive integer"),
        ({"prior": True}, "prior preservation needs a class noun"),
        ({"token": "two words"}, "--token must be one word"),
        ({"lr": -1.0}, "--lr must be a positive number"),
        ({"class_noun": "dog", "token": "dog"}, "--token dog is the class noun (dog)"),
        ({"class_noun": "Golden Retriever", "token": "retriever"}, "--token retriever is the class noun"),
        ({"class_noun": "{token}"}, "--class-noun '{token}' must be plain words"),
        (
            {
                "class_noun": "dog",
                "prior": True,
                "class_prompts": ("a {class_noun} on grass", "{token} {class_noun}"),
            },
            "--class-prompts '{token} {class_noun}' names the token",
        ),
        (
            {"class_noun": "dog", "prior": True, "class_prompt": "a photo of sks dog"},
            "--class-prompt 'a photo of sks dog' names the token",
        ),
    ],
)
def test_bad_values_are_named(overrides, message) -> None:
    with pytest.raises(BoothkitError, match=re.escape(message)):
        TrainConfig(**{**REQ, "prior": False, **overrides})


def test_toml_errors_name_the_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("rank = 'eight'\n")
    with pytest.raises(BoothkitError, match=r"bad.toml: rank must be an integer"):
        load_toml(f)
    f.write_text("rnak = 8\n")
    with pytest.raises(BoothkitError, match="unknown setting 'rnak'"):
        load_toml(f)
    f.write_text("rank = \n")
    with pytest.raises(BoothkitError, match="not valid TOML"):
        load_toml(f)


def test_a_class_prompt_without_the_token_passes() -> None:
    cfg = TrainConfig(**{**REQ, "class_noun": "dog", "class_prompts": ("a photo of {class_noun} on sksand",)})  # type: ignore[arg-type]
    assert cfg.uses_prior  # "sksand" is another word, not the token
