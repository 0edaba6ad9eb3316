"""Runs that never lose work: exact resume after kills, refusals, numerical guards, OOM, disk, pickles."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import boothkit.train as train_mod
from boothkit.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, verify
from boothkit.config import TrainConfig
from boothkit.errors import BoothkitError
from boothkit.train import train
from conftest import fast_settings, make_photos, train_args

STEPS = 6


def _settings(**kw: object) -> dict[str, object]:
    return fast_settings(
        **{"steps": STEPS, "checkpoint_every": 2, "grad_accum": 2, "flip": True, "noise_offset": 0.05, **kw}
    )


def _config(model: Path, photos: Path, out: Path, **kw: object) -> TrainConfig:
    return TrainConfig(
        model=str(model), images=str(photos), output=str(out), class_noun="dog", **_settings(**kw)
    )  # type: ignore[arg-type]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "pytorch_lora_weights.safetensors")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """An uninterrupted run: the result every interrupted-and-resumed run must reproduce bit for bit."""
    root = tmp_path_factory.mktemp("reference")
    photos = make_photos(root / "photos")
    model = tiny_model("sd1")
    result = train(_config(model, photos, root / "run"), progress=False, log=lambda s: None)
    return model, photos, _weights(result.output)


def _cli_args(model: Path, photos: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "boothkit.cli", *train_args(model, photos, out, **_settings()), "--quiet"]


@pytest.mark.parametrize("fault", ["micro:3", "checkpoint-write:4", "sigkill-mid-epoch"])
def test_killed_run_resumes_to_bit_identical_weights(reference, tmp_path, fault) -> None:
    model, photos, expected = reference
    out = tmp_path / "run"
    # Bit-identical needs the same thread count on both sides of the kill (as on one machine).
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    if fault == "sigkill-mid-epoch":
        proc = subprocess.Popen(
            _cli_args(model, photos, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        log = out / "logs" / "train.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= 3:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    else:
        env["BOOTHKIT_FAULT"] = fault
        proc = subprocess.run(_cli_args(model, photos, out), env=env, capture_output=True, timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (out / "pytorch_lora_weights.safetensors").exists(), (
        "the run should have died before finishing"
    )
    if fault == "checkpoint-write:4":
        # The checkpoint being written at step 4 never became visible; step 2's is the newest complete one.
        assert latest_checkpoint(out) is not None and latest_checkpoint(out).name == "step-000002"
    result = train(_config(model, photos, out, resume=str(out)), progress=False, log=lambda s: None)
    assert _same(_weights(result.output), expected)
    steps = [json.loads(line)["step"] for line in (out / "logs" / "train.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # the log reads as one run: no replayed or missing steps


def test_resume_refuses_changed_images_or_config_unless_forced(reference, tmp_path) -> None:
    model, photos, _ = reference
    own = make_photos(tmp_path / "photos")
    out = tmp_path / "run"
    train(_config(model, own, out, steps=2), progress=False, log=lambda s: None)
    with pytest.raises(BoothkitError, match=r"lr: 0.01 in the checkpoint, 0.02 now"):
        train(_config(model, own, out, lr=0.02, resume="latest"), progress=False, log=lambda s: None)
    (own / "photo_3.png").unlink()
    make_photos(tmp_path / "other", n=1)
    (tmp_path / "other" / "photo_0.png").rename(own / "photo_3.png")
    with pytest.raises(BoothkitError, match="instance images changed"):
        train(_config(model, own, out, resume="latest"), progress=False, log=lambda s: None)
    result = train(
        _config(model, own, out, resume="latest", force_resume=True), progress=False, log=lambda s: None
    )
    assert result.steps == STEPS


def test_resume_without_checkpoint_never_starts_fresh(reference, tmp_path) -> None:
    model, photos, _ = reference
    (tmp_path / "run").mkdir()
    with pytest.raises(BoothkitError, match="no complete checkpoint"):
        train(_config(model, photos, tmp_path / "run", resume="latest"), progress=False, log=lambda s: None)


def test_rotation_keeps_newest_verified_checkpoints(reference, tmp_path) -> None:
    model, photos, _ = reference
    train(_config(model, photos, tmp_path / "run", keep_checkpoints=2), progress=False, log=lambda s: None)
    kept = list_checkpoints(tmp_path / "run")
    assert [p.name for p in kept] == ["step-000006", "step-000004"]
    assert all(verify(p) for p in kept)
    ckpt = load_checkpoint(kept[0])
    assert ckpt.loop.step == 6 and ckpt.trainable and ckpt.optimizer["state"]
    # Every checkpoint file is safetensors or JSON: nothing in it is unpickled when it is read.
    assert {p.suffix for p in kept[0].iterdir()} == {".safetensors", ".json"}


def test_one_nan_batch_is_skipped_and_counted(reference, tmp_path, monkeypatch) -> None:
    model, photos, _ = reference
    calls = {"n": 0}
    original = train_mod.batch_latents

    def poisoned(*args, **kwargs):
        latents, ids = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # step 2, first micro-batch
            latents = latents * float("nan")
        return latents, ids

    monkeypatch.setattr(train_mod, "batch_latents", poisoned)
    result = train(_config(model, photos, tmp_path / "run"), progress=False, log=lambda s: None)
    summary = json.loads((result.output / "summary.json").read_text())
    assert summary["skipped_steps"] == 1
    rows = [json.loads(x) for x in (result.output / "logs" / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("skipped")] == [2]
    assert all(torch.isfinite(v).all() for v in _weights(result.output).values())


def test_persistent_nan_stops_with_last_good_checkpoint(reference, tmp_path, monkeypatch) -> None:
    model, photos, _ = reference
    calls = {"n": 0}
    original = train_mod.batch_latents

    def poisoned(*args, **kwargs):
        latents, ids = original(*args, **kwargs)
        calls["n"] += 1
        return (latents * float("nan") if calls["n"] > 4 else latents), ids  # from step 3 on

    monkeypatch.setattr(train_mod, "batch_latents", poisoned)
    out = tmp_path / "run"
    with pytest.raises(BoothkitError, match=r"consecutive steps had a non-finite loss.*step-000002") as info:
        train(_config(model, photos, out, max_nan_steps=3), progress=False, log=lambda s: None)
    assert "bf16" in (info.value.hint or "")
    good = latest_checkpoint(out)
    assert good is not None and good.name == "step-000002"
    assert all(torch.isfinite(t).all() for t in load_checkpoint(good).trainable.values())
    assert not (out / "pytorch_lora_weights.safetensors").exists()


def test_oom_is_explained_and_auto_batch_size_recovers(reference, tmp_path, monkeypatch) -> None:
    model, photos, _ = reference
    original = train_mod.micro_step

    def small_memory(run, batch, generator, accum):
        if len(batch) > 2:  # more than 1 instance + 1 class image "does not fit"
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(run, batch, generator, accum)

    monkeypatch.setattr(train_mod, "micro_step", small_memory)
    with pytest.raises(BoothkitError, match="out of memory at step 1") as info:
        train(
            _config(model, photos, tmp_path / "a", batch_size=2, grad_accum=1),
            progress=False,
            log=lambda s: None,
        )
    assert "--auto-batch-size" in (info.value.hint or "") and "--gradient-checkpointing" in (
        info.value.hint or ""
    )
    messages: list[str] = []
    result = train(
        _config(model, photos, tmp_path / "b", batch_size=2, grad_accum=1, auto_batch_size=True),
        progress=False,
        log=messages.append,
    )
    assert any("--batch-size 1 --grad-accum 2" in m for m in messages)
    assert result.steps == STEPS


def test_disk_full_during_checkpoint_keeps_the_previous_one(reference, tmp_path, monkeypatch) -> None:
    model, photos, _ = reference
    import boothkit.checkpoint as ck

    original = ck._write_safetensors
    calls = {"n": 0}

    def full_disk(path, tensors):
        calls["n"] += 1
        if calls["n"] > 3:  # the second checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        original(path, tensors)

    monkeypatch.setattr(ck, "_write_safetensors", full_disk)
    out = tmp_path / "run"
    with pytest.raises(BoothkitError, match=r"No space left on device.*step-000002 is intact"):
        train(_config(model, photos, out), progress=False, log=lambda s: None)
    assert [p.name for p in list_checkpoints(out)] == ["step-000002"]
    assert load_checkpoint(out / "checkpoints" / "step-000002").loop.step == 2
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


def test_refuses_to_start_without_disk_space(reference, tmp_path, monkeypatch) -> None:
    model, photos, _ = reference
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(BoothkitError, match=r"needs about [\d,]+ bytes, 1,000 are free"):
        train(_config(model, photos, tmp_path / "run"), progress=False, log=lambda s: None)


def test_sigint_finishes_the_step_saves_and_exits_cleanly(reference, tmp_path) -> None:
    model, photos, expected = reference
    out = tmp_path / "run"
    args = _cli_args(model, photos, out)
    args[args.index("--steps") + 1] = "100000"  # long enough to be interrupted
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "logs" / "train.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.read_text().count("\n") >= 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "boothkit train --resume" in err
    ckpt = latest_checkpoint(out)
    assert ckpt is not None and json.loads((out / "boothkit_run.json").read_text())["status"] == "interrupted"


class Canary:
    """A pickle that, when unpickled, would create a file: proof of code execution."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _evil(path: Path, canary: Path) -> Path:
    with path.open("wb") as f:
        pickle.dump({"state_dict": {"w": Canary(canary)}}, f)
    return path


@pytest.mark.parametrize("allow", [False, True])
def test_pickles_never_run_code_at_any_loading_point(reference, tmp_path, allow, capsys) -> None:
    from boothkit.cli import main

    model, photos, _ = reference
    canary = tmp_path / "CANARY"
    flag = ["--allow-pickle"] if allow else []
    # base model
    code = main(
        [
            "train",
            "--model",
            str(_evil(tmp_path / "model.ckpt", canary)),
            "--images",
            str(photos),
            "--output",
            str(tmp_path / "o"),
            "--no-prior",
            "--resolution",
            "32",
            *flag,
        ]
    )
    assert code == 2 and not canary.exists()
    # LoRA
    code = main(
        [
            "generate",
            "--model",
            str(model),
            "--lora",
            str(_evil(tmp_path / "lora.bin", canary)),
            "--prompt",
            "x",
            "--steps",
            "1",
            "--output",
            str(tmp_path / "g"),
            *flag,
        ]
    )
    assert code == 2 and not canary.exists()
    err = capsys.readouterr().err
    assert ("pickle" in err) if not allow else ("refused" in err)
    # resume: a crafted checkpoint folder holding a pickle where safetensors belong
    out = tmp_path / "run"
    train(_config(model, photos, out, steps=2), progress=False, log=lambda s: None)
    ckpt = latest_checkpoint(out)
    assert ckpt is not None
    _evil(ckpt / "trainable.safetensors", canary)
    with pytest.raises(BoothkitError):
        train(_config(model, photos, out, resume="latest"), progress=False, log=lambda s: None)
    assert not canary.exists()


def test_malformed_safetensors_gets_a_clear_error(reference, tmp_path, capsys) -> None:
    from boothkit.cli import main

    model, _, _ = reference
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\xff" * 64)
    assert main(["generate", "--model", str(model), "--lora", str(bad), "--prompt", "x"]) == 2
    assert "not a valid .safetensors file" in capsys.readouterr().err
    assert main(["generate", "--model", str(bad), "--prompt", "x"]) == 2
    assert "not a valid .safetensors file" in capsys.readouterr().err
