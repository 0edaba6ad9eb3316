"""Shared fixtures: tiny models of each family built once per session, synthetic photos, offline env."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "dreambooth"

# The tiny models' ops are too small to gain from threads; one thread avoids oversubscribing the
# CI machine's two cores when a test also runs a subprocess, and is bit-for-bit deterministic.
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # The class-image bank and HF cache live in the test's temp dirs, never in the user's home.
    root = tmp_path_factory.getbasetemp() / "cache"
    monkeypatch.setenv("BOOTHKIT_CACHE", str(root / "boothkit"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """tiny_model("sd1"|"sd2"|"sdxl") -> Path of a tiny diffusers folder (built once per session)."""
    from boothkit.tiny import build_tiny_pipeline

    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        """sd1, sd2, sdxl, flux1 (guidance-distilled, as Flux.1-dev) or flux1-schnell (no guidance input)."""
        if family not in built:
            folder = tmp_path_factory.mktemp(f"tiny_{family}")
            name, _, variant = family.partition("-")
            built[family] = build_tiny_pipeline(name, folder, distilled_guidance=variant != "schnell")  # type: ignore[arg-type]
        return built[family]

    return get


def make_photos(folder: Path, n: int = 4, size: int = 40) -> Path:
    """n small, distinct RGB photos of a 'subject' (a coloured disc on varied backgrounds)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.new("RGB", (size, size + 8 * (i % 2)), (40 * i % 255, 120, 200 - 30 * i))
        d = ImageDraw.Draw(im)
        d.ellipse([6 + i, 8, 30 + i, 32], fill=(230, 60, 40), outline=(0, 0, 0))
        d.rectangle([14, 16, 20, 22], fill=(250, 240, 30))
        im.save(folder / f"photo_{i}.png")
    return folder


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    return make_photos(tmp_path / "photos")


def fast_settings(**overrides: object) -> dict[str, object]:
    """Settings that make a tiny training run take about a second."""
    base: dict[str, object] = {
        "steps": 4,
        "resolution": 32,
        "class_images": 2,
        "class_steps": 2,
        "class_batch_size": 2,
        "sample_steps": 2,
        "sample_prompts": ("a photo of {token} {class_noun}",),
        "sample_seeds": (0,),
        "lr": 1e-2,
        "device": "cpu",
    }
    base.update(overrides)
    return base


def train_config(model: Path, photos: Path, out: Path, **overrides: object):  # -> TrainConfig
    """A dog run of ``model`` on ``photos`` into ``out`` with :func:`fast_settings` (and ``overrides``)."""
    from boothkit.config import TrainConfig

    return TrainConfig(
        model=str(model), images=str(photos), output=str(out), class_noun="dog", **fast_settings(**overrides)
    )  # type: ignore[arg-type]


def train_args(model: Path, photos: Path, out: Path, **overrides: object) -> list[str]:
    """The ``boothkit train`` arguments of :func:`train_config`, for runs through the command line."""
    args = [
        "train",
        "--model",
        str(model),
        "--images",
        str(photos),
        "--output",
        str(out),
        "--class-noun",
        "dog",
    ]
    for key, value in fast_settings(**overrides).items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif isinstance(value, tuple):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``boothkit ARGS`` in this process: (exit code, stdout, stderr)."""
    from boothkit.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_refused(capsys: pytest.CaptureFixture[str], args: list[str], phrase: str) -> str:
    """``boothkit ARGS`` exits 2 with ``phrase`` in its message and no traceback; returns stderr."""
    code, _, err = run_cli(capsys, *args)
    assert code == 2, err
    assert phrase in err and "Traceback" not in err, err
    return err


@contextmanager
def crash_at_step(monkeypatch: pytest.MonkeyPatch, n: int) -> Iterator[None]:
    """Inside: the n-th micro step of a training run raises RuntimeError("simulated crash"), as a
    process that dies mid-run; after: steps run as they do."""
    import boothkit.train as train_mod

    original, calls = train_mod.micro_step, {"n": 0}

    def crashing(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("simulated crash")
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train_mod, "micro_step", crashing)
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            yield
    finally:
        monkeypatch.setattr(train_mod, "micro_step", original)
