"""The environment's faults get the same care as the user's: a full disk at every write site, a
read-only folder, damaged files, and the things that used to lose meaning without a word."""

from __future__ import annotations

import errno
import json
import math
import os
import shlex
import shutil
import stat
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import boothkit.train as train_mod
from boothkit.errors import BoothkitError, WriteError
from boothkit.files import CHECKPOINT_MANIFEST, CHECKPOINT_WEIGHTS, LORA_FILE, RUN_MARKER
from boothkit.train import train
from conftest import make_photos, run_cli, train_config

FULL = (
    'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
)


_config = train_config


def _quiet(message: str) -> None:
    pass


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


# ----------------------------------------------------------------------------- a full disk at each write site


def test_disk_full_in_a_checkpoint_marks_the_run_interrupted_and_it_resumes(
    tiny_model, photos, tmp_path, monkeypatch
) -> None:
    """safetensors reports a full disk with its own error, not OSError: the half-written checkpoint
    goes, the marker says interrupted, and the message names the checkpoint that is intact."""
    import boothkit.checkpoint as ck

    out = tmp_path / "run"
    original, calls = ck.save_file, {"n": 0}

    def full_disk(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] > 4:  # the second checkpoint's files
            raise SafetensorError(FULL)
        return original(tensors, path, metadata=metadata)

    monkeypatch.setattr(ck, "save_file", full_disk)
    with pytest.raises(WriteError, match=r"No space left on device.*step-000002 is intact") as info:
        train(
            _config(tiny_model("sd1"), photos, out, steps=6, checkpoint_every=2), progress=False, log=_quiet
        )
    assert f"--resume {out}" in (info.value.hint or "")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000002"]
    marker = json.loads((out / RUN_MARKER).read_text())
    assert marker["status"] == "interrupted" and "No space left" in marker["reason"]
    monkeypatch.setattr(ck, "save_file", original)
    result = train(
        _config(tiny_model("sd1"), photos, out, steps=6, checkpoint_every=2, resume=str(out)),
        progress=False,
        log=_quiet,
    )
    assert (result.output / LORA_FILE).is_file()


def test_disk_full_writing_the_lora_is_explained(tiny_model, photos, tmp_path, monkeypatch) -> None:
    import safetensors.torch

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "run"
    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(
        WriteError, match=rf"could not write .*{LORA_FILE} \(No space left on device\)"
    ) as info:
        train(_config(tiny_model("sd1"), photos, out), progress=False, log=_quiet)
    assert "free some disk space" in (info.value.hint or "")
    assert not (out / LORA_FILE).exists() and not _hidden(out)
    assert json.loads((out / RUN_MARKER).read_text())["status"] == "interrupted"


def test_disk_full_in_the_class_image_bank_leaves_nothing_behind(
    tiny_model, photos, tmp_path, monkeypatch
) -> None:
    from PIL import Image

    def full_disk(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(fp))

    monkeypatch.setattr(Image.Image, "save", full_disk)
    out, bank = tmp_path / "run", tmp_path / "bank"
    with pytest.raises(WriteError, match=r"could not write .*00000\.png \(No space left on device\)"):
        train(_config(tiny_model("sd1"), photos, out, bank_dir=str(bank)), progress=False, log=_quiet)
    assert not out.exists()  # it failed before the run started: no empty --output is left
    assert bank.is_dir() and not [p for p in bank.rglob("*") if ".tmp" in p.name]


def test_disk_full_in_export_and_a_killed_exports_leftovers(
    tiny_model, photos, tmp_path, monkeypatch, capsys
) -> None:
    import boothkit.export as export

    run = train(_config(tiny_model("sd1"), photos, tmp_path / "run"), progress=False, log=_quiet).output
    dest = tmp_path / "out" / "x.safetensors"
    dest.parent.mkdir()
    stale = dest.parent / ".x.safetensors.abc123.tmp.safetensors"  # what a killed export left
    stale.write_bytes(b"half")

    def full_disk(*args, **kwargs):
        raise SafetensorError(FULL)

    original = export.save_file
    monkeypatch.setattr(export, "save_file", full_disk)
    code, _, err = run_cli(capsys, "export", str(run), "--format", "kohya", "--output", str(dest))
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    assert not dest.exists() and not any(dest.parent.iterdir())  # the leftover went too
    monkeypatch.setattr(export, "save_file", original)
    os.umask(0o022)
    code, _, err = run_cli(capsys, "export", str(run), "--format", "kohya", "--output", str(dest))
    assert code == 0, err
    mode = stat.S_IMODE(dest.stat().st_mode)
    assert mode & 0o044 == 0o044, oct(mode)  # readable by a ComfyUI service running as another user
    assert [p.name for p in dest.parent.iterdir()] == ["x.safetensors"]


# ----------------------------------------------------------------------------- the environment's other faults


def test_environment_faults_are_explained_with_exit_2(tiny_model, photos, tmp_path, capsys) -> None:
    model = str(tiny_model("sd1"))
    base = [
        "train",
        "--model",
        model,
        "--images",
        str(photos),
        "--class-noun",
        "dog",
        "--no-prior",
        "--resolution",
        "32",
        "--quiet",
    ]
    # --config that is a folder
    code, _, err = run_cli(capsys, *base, "--output", str(tmp_path / "a"), "--config", str(tmp_path))
    assert code == 2 and "is a folder" in err and "Traceback" not in err
    # an --images symbolic link that points back at itself
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    code, _, err = run_cli(
        capsys, "train", "--model", model, "--images", str(loop), "--output", str(tmp_path / "b")
    )
    assert code == 2 and str(loop) in err and "Traceback" not in err
    # an --output the system won't let anyone create
    code, _, err = run_cli(capsys, *base, "--output", "/proc/boothkit-test/run")
    assert code == 2 and "/proc/boothkit-test/run" in err and "Traceback" not in err and "report" not in err


def test_damaged_run_files_are_named(tiny_model, photos, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    train(_config(tiny_model("sd1"), photos, out, steps=4, checkpoint_every=2), progress=False, log=_quiet)
    marker = out / RUN_MARKER
    good = marker.read_bytes()
    marker.write_text("{not json")
    code, _, err = run_cli(capsys, "train", "--resume", str(out), "--steps", "6", "--quiet")
    assert code == 2 and f"the run marker {marker} can't be read" in err and "Traceback" not in err
    marker.write_bytes(good)

    (out / "checkpoints" / "step-000004" / CHECKPOINT_MANIFEST).write_text("[broken")
    (out / "checkpoints" / "step-000002" / CHECKPOINT_WEIGHTS).write_bytes(b"changed")
    code, _, err = run_cli(capsys, "train", "--resume", str(out), "--steps", "6", "--quiet")
    assert code == 2 and "no complete checkpoint to resume from" in err
    assert f"step-000004 can't be used: its {CHECKPOINT_MANIFEST} can't be read" in err
    assert f"step-000002 can't be used: {CHECKPOINT_WEIGHTS} does not match the hash" in err


def test_forged_checkpoint_tensors_are_refused_by_name(tiny_model, photos, tmp_path) -> None:
    """A checkpoint whose tensors were replaced (and its manifest's hashes with them) does not fit the
    run: refused by name instead of failing deep inside torch."""
    from boothkit.checkpoint import sha256

    out = tmp_path / "run"
    train(_config(tiny_model("sd1"), photos, out, steps=2, checkpoint_every=2), progress=False, log=_quiet)
    ckpt = out / "checkpoints" / "step-000002"
    tensors = load_file(ckpt / CHECKPOINT_WEIGHTS)
    name = next(iter(tensors))
    tensors[name] = torch.zeros(3, 5)
    save_file(tensors, str(ckpt / CHECKPOINT_WEIGHTS))
    manifest = json.loads((ckpt / CHECKPOINT_MANIFEST).read_text())
    manifest["files"][CHECKPOINT_WEIGHTS] = sha256(ckpt / CHECKPOINT_WEIGHTS)
    (ckpt / CHECKPOINT_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BoothkitError, match=r"does not fit this run's trainable weights .*another shape"):
        train(_config(tiny_model("sd1"), photos, out, steps=4, resume=str(out)), progress=False, log=_quiet)
    assert json.loads((out / RUN_MARKER).read_text())["status"] == "complete"  # untouched


# ----------------------------------------------------------------------------- silent loss of meaning


def test_a_damaged_newest_checkpoint_is_named_before_falling_back(tiny_model, photos, tmp_path) -> None:
    out = tmp_path / "run"
    train(_config(tiny_model("sd1"), photos, out, steps=4, checkpoint_every=2), progress=False, log=_quiet)
    (out / "checkpoints" / "step-000004" / "rng.json").write_text("{}")
    said: list[str] = []
    train(
        _config(tiny_model("sd1"), photos, out, steps=6, checkpoint_every=2, resume=str(out)),
        progress=False,
        log=said.append,
    )
    assert any("step-000004 can't be used: rng.json does not match" in s for s in said), said
    assert any("resuming from" in s and "step-000002" in s for s in said)


def test_skip_invalid_says_which_files_it_skipped(tiny_model, photos, tmp_path) -> None:
    broken = photos / "broken.jpg"
    broken.write_bytes(b"not an image")
    classes = make_photos(tmp_path / "classes")
    (classes / "half.png").write_bytes((classes / "photo_0.png").read_bytes()[:100])
    said: list[str] = []
    result = train(
        _config(tiny_model("sd1"), photos, tmp_path / "run", skip_invalid=True, class_dir=str(classes)),
        progress=False,
        log=said.append,
    )
    skipped = json.loads((result.output / "summary.json").read_text())["skipped_files"]
    assert [s.split(": ")[0] for s in skipped] == [str(broken), str(classes / "half.png")]
    assert sum(s.startswith("skipped (--skip-invalid): ") for s in said) == 2


def test_a_prompt_longer_than_the_text_encoder_reads(tiny_model, photos, tmp_path, capsys) -> None:
    """Cut silently before: now a warning says what is cut, and a cut identifier is refused."""
    padding = " ".join(["a photo of a dog"] * 18)
    (photos / "photo_0.txt").write_text(f"a photo of {{token}} {{class_noun}} {padding}")
    said: list[str] = []
    result = train(_config(tiny_model("sd1"), photos, tmp_path / "a"), progress=False, log=said.append)
    warned = [s for s in said if "tokens long and the text encoder reads the first 75" in s]
    assert len(warned) == 1 and "is left out" in warned[0]
    assert any(
        "is left out" in w for w in json.loads((result.output / "summary.json").read_text())["warnings"]
    )

    (photos / "photo_0.txt").write_text(f"{padding} a photo of {{token}} {{class_noun}}")
    with pytest.raises(BoothkitError, match=r"sks is in the part that is cut off"):
        train(_config(tiny_model("sd1"), photos, tmp_path / "b"), progress=False, log=_quiet)
    assert not (tmp_path / "b").exists()

    model = str(tiny_model("sd1"))
    args = ["generate", "--model", model, "--steps", "1", "--output", str(tmp_path / "g")]
    code, _, err = run_cli(capsys, *args, "--prompt", f"a photo of sks dog {padding}")
    assert code == 0 and "is left out" in err
    code, _, err = run_cli(
        capsys, *args, "--lora", str(result.output), "--prompt", f"{padding} a photo of sks dog"
    )
    assert code == 2 and "sks is in the part that is cut off" in err


# ----------------------------------------------------------------------------- small things people trip on


def test_small_things(tiny_model, photos, tmp_path, monkeypatch) -> None:
    """The generate line survives a path with spaces; a moved run resumes; train.jsonl is JSON."""
    out = tmp_path / "my runs" / "first run"
    result = train(
        _config(tiny_model("sd1"), photos, out, steps=2, checkpoint_every=2, max_grad_norm=0.0),
        progress=False,
        log=_quiet,
    )
    from boothkit.outputs import summary_text

    line = summary_text(result, _config(tiny_model("sd1"), photos, out)).splitlines()[-1]
    assert shlex.split(line)[shlex.split(line).index("--lora") + 1] == str(out)

    rows = [
        json.loads(x, parse_constant=lambda c: pytest.fail(f"{c} in train.jsonl"))
        for x in (out / "logs" / "train.jsonl").read_text().splitlines()
    ]
    assert all(r["grad_norm"] is None and r["nonfinite"] == ["grad_norm"] for r in rows)  # no clipping

    moved = tmp_path / "elsewhere"
    shutil.move(str(out), moved)
    again = train(
        _config(
            tiny_model("sd1"),
            photos,
            moved,
            steps=4,
            checkpoint_every=2,
            max_grad_norm=0.0,
            resume=str(moved),
        ),
        progress=False,
        log=_quiet,
    )
    assert (again.output / LORA_FILE).is_file()


def test_a_run_whose_every_step_was_skipped_never_reports_success(
    tiny_model, photos, tmp_path, monkeypatch
) -> None:
    original = train_mod.batch_latents

    def poisoned(*args, **kwargs):
        latents, ids = original(*args, **kwargs)
        return latents * math.nan, ids

    monkeypatch.setattr(train_mod, "batch_latents", poisoned)
    out = tmp_path / "run"
    with pytest.raises(BoothkitError, match="every one of the 3 steps had a non-finite loss"):
        train(_config(tiny_model("sd1"), photos, out, steps=3, max_nan_steps=10), progress=False, log=_quiet)
    assert not (out / LORA_FILE).exists()
    assert json.loads((out / RUN_MARKER).read_text())["status"] == "failed"
