"""`boothkit demo` end to end on the shipped toy model: a fast variant, and the default one (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from boothkit.demo import run_demo


def test_demo_fast_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = run_demo(tmp_path / "demo", steps=4, class_images=2, seeds=(0,), gen_steps=4, progress=False)
    assert (run / "demo_grid.png").exists()
    assert (run / "pytorch_lora_weights.safetensors").exists()
    printed = capsys.readouterr().out
    for score in ("subject fidelity", "prompt fidelity", "leakage"):
        assert score in printed
    assert "--prompt 'a photo of a large sks circle in the top left on a grass background'" in printed


def test_demo_refuses_an_unknown_subject(tmp_path: Path) -> None:
    from boothkit.errors import BoothkitError

    with pytest.raises(BoothkitError, match="unknown toy-world subject"):
        run_demo(tmp_path / "demo", subject="no_such_thing", progress=False)


@pytest.mark.slow
def test_demo_default_settings_learns_the_subject(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from boothkit.cli import main

    assert main(["demo", "--quiet", "--output", str(tmp_path / "demo")]) == 0
    assert "subject fidelity" in capsys.readouterr().out


def test_demo_refuses_zero_steps_before_writing(tmp_path, capsys) -> None:
    from boothkit.cli import main

    assert main(["demo", "--steps", "0", "--output", str(tmp_path / "d")]) == 2
    assert "--steps must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_a_second_demo_reuses_the_class_images_in_the_shared_bank(tmp_path: Path, monkeypatch) -> None:
    """The demo keeps its class images in the bank `boothkit train` uses, so running it again makes
    none (it made them afresh in its own folder every time)."""
    import boothkit.prior as prior

    made: list[int] = []
    original = prior.ensure_class_images

    def counting(pipeline, key, count, **kw):
        bank = prior.bank_dir(key, kw.get("root"))
        made.append(count - len(prior.existing_images(bank, count)))
        return original(pipeline, key, count, **kw)

    monkeypatch.setattr(prior, "ensure_class_images", counting)
    fast = {"steps": 2, "class_images": 2, "seeds": (0,), "gen_steps": 2, "progress": False}
    first = run_demo(tmp_path / "demo", **fast)
    second = run_demo(tmp_path / "demo", **fast)
    assert first != second and made == [2, 0]
    assert not (first.parent / "class_bank").exists() and not (second.parent / "class_bank").exists()
