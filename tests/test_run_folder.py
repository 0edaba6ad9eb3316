"""A run folder is never lost or mixed: refused commands change nothing, one writer at a time, and
the marker's history says who changed it and when."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boothkit.errors import BoothkitError
from boothkit.files import RUN_MARKER
from boothkit.locks import Lock, lock_file
from boothkit.train import train
from conftest import make_photos, run_cli, train_args, train_config


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and modification time (nanoseconds)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _args(model: Path, photos: Path, out: Path, *extra: str) -> list[str]:
    args = train_args(model, photos, out, steps=4, class_batch_size=2, checkpoint_every=3)
    return [*args, "--quiet", *extra]


@pytest.fixture
def finished(tiny_model, tmp_path, capsys) -> tuple[Path, Path, Path]:
    model, photos = tiny_model("sd1"), make_photos(tmp_path / "photos")
    out = tmp_path / "runs" / "r"
    code, _, err = run_cli(capsys, *_args(model, photos, out))
    assert code == 0, err
    return model, photos, out


def test_refused_commands_leave_a_finished_run_as_it_was(finished, capsys) -> None:
    """The issue's sequence: a resume refused for a changed setting rewrote the marker and config, and
    then a fresh run into the same folder replaced the finished LoRA. Now neither touches a byte."""
    model, photos, out = finished
    before = _snapshot(out)
    code, _, err = run_cli(capsys, "train", "--resume", str(out), "--lr", "0.002", "--quiet")
    assert code == 2 and "refusing to resume" in err and "lr: 0.01 in the checkpoint, 0.002 now" in err
    assert _snapshot(out) == before
    code, _, err = run_cli(capsys, *_args(model, photos, out, "--seed", "9"))
    assert code == 2 and "already holds a finished run" in err
    assert _snapshot(out) == before
    (photos / "photo_0.png").write_bytes((photos / "photo_1.png").read_bytes())  # the photos changed
    code, _, err = run_cli(capsys, "train", "--resume", str(out), "--quiet")
    assert code == 2 and "the instance images changed" in err
    assert _snapshot(out) == before


def test_the_marker_keeps_a_history_of_who_changed_it(finished, capsys) -> None:
    _, _, out = finished
    code, _, err = run_cli(capsys, "train", "--resume", str(out), "--steps", "6", "--quiet")  # more steps
    assert code == 0, err
    marker = json.loads((out / RUN_MARKER).read_text())
    assert marker["status"] == "complete"
    history = marker["history"]
    assert [h["status"] for h in history] == ["running", "complete", "running", "complete"]
    # in this process: the commands are the test runner's own command line
    assert all(h["pid"] == os.getpid() and h["at"] and h["command"].startswith("boothkit") for h in history)


def test_a_new_run_never_mixes_with_an_unfinished_one(tiny_model, tmp_path, capsys) -> None:
    """A run that stopped (here: killed after its first checkpoint) can be resumed, not overwritten."""
    model, photos = tiny_model("sd1"), make_photos(tmp_path / "photos")
    out = tmp_path / "r"
    env = {**os.environ, "BOOTHKIT_FAULT": "micro:4"}
    proc = subprocess.run(
        [sys.executable, "-m", "boothkit.cli", *_args(model, photos, out, "--grad-accum", "2")],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (change,) = json.loads((out / RUN_MARKER).read_text())["history"]
    assert change["status"] == "running"
    assert change["command"].startswith("boothkit train --model") and change["pid"] != os.getpid()
    before = _snapshot(out)
    code, _, err = run_cli(capsys, *_args(model, photos, out))
    assert code == 2 and "holds an unfinished run (running)" in err and f"--resume {out}" in err
    assert _snapshot(out) == before


def test_a_run_that_fails_before_it_starts_leaves_no_folder(tiny_model, tmp_path, capsys) -> None:
    photos = make_photos(tmp_path / "photos")
    out = tmp_path / "new" / "deeper" / "r"
    code, _, err = run_cli(capsys, *_args(tmp_path / "no-such-model", photos, out))
    assert code == 2 and "does not exist" in err
    assert not (tmp_path / "new").exists()


def test_a_second_writer_is_refused_and_a_killed_one_never_blocks_resume(
    tiny_model, tmp_path, capsys
) -> None:
    """Two real processes: the second `train` into the first's folder is refused with the first's pid;
    after the first is killed (SIGKILL: no cleanup at all), its run resumes."""
    model, photos = tiny_model("sd1"), make_photos(tmp_path / "photos")
    out = tmp_path / "r"
    args = _args(model, photos, out, "--checkpoint-every", "1")
    args[args.index("--steps") + 1] = "2000"
    first = subprocess.Popen(
        [sys.executable, "-m", "boothkit.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (out / "checkpoints" / "step-000002").exists():
            assert first.poll() is None, "the first run ended early"
            time.sleep(0.05)
        before = (out / "config.toml").read_bytes()
        code, _, err = run_cli(capsys, *_args(model, photos, out, "--seed", "3"))
        assert code == 2 and f"pid {first.pid}" in err and "being written by another boothkit process" in err
        code, _, err = run_cli(capsys, "train", "--resume", str(out), "--quiet")
        assert code == 2 and f"pid {first.pid}" in err
        assert (out / "config.toml").read_bytes() == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    code, _, err = run_cli(capsys, "train", "--resume", str(out), "--steps", "6", "--quiet")
    assert code == 0, err
    assert json.loads((out / RUN_MARKER).read_text())["status"] == "complete"


def test_a_bank_entry_is_filled_by_one_process_at_a_time(tiny_model, tmp_path) -> None:
    """While another process fills a class-image bank entry, a run that needs it waits (and says so),
    then takes the images that process made instead of making them again beside it."""
    from boothkit.families import load_model
    from boothkit.prior import class_images

    model, photos = tiny_model("sd1"), make_photos(tmp_path / "photos")
    config = train_config(model, photos, tmp_path / "a")
    made = class_images(config, load_model(str(model)), 32, progress=False).paths
    (entry,) = {p.parent for p in made}
    kept = {p: p.read_bytes() for p in made}
    for p in made:
        p.unlink()  # as if the other process had not made them yet

    holder = Lock(entry, "class-image bank entry").acquire()
    try:
        second = subprocess.Popen(
            [sys.executable, "-m", "boothkit.cli", *_args(model, photos, tmp_path / "b")],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert second.stdout is not None
        line = second.stdout.readline()  # blocks until the run says something
        assert "waiting for the class-image bank entry" in line and f"pid {os.getpid()}" in line, line
        time.sleep(0.5)
        assert not any(p.exists() for p in made)  # it waits; it does not fill the entry beside us
        for p, data in kept.items():  # "the other process" finishes the images
            p.write_bytes(data)
        stamps = {p: p.stat().st_mtime_ns for p in made}
    finally:
        holder.release()
    assert second.wait(timeout=300) == 0
    assert {p: p.stat().st_mtime_ns for p in made} == stamps  # taken as they were, not made again


def test_export_refuses_a_destination_another_process_writes(tiny_model, tmp_path, capsys) -> None:
    from boothkit.cli import main

    model, photos = tiny_model("sd1"), make_photos(tmp_path / "photos")
    run = train(train_config(model, photos, tmp_path / "r"), progress=False, log=lambda s: None).output
    dest = tmp_path / "out" / "x.safetensors"
    with Lock(dest, "export destination"):
        code = main(["export", str(run), "--format", "kohya", "--output", str(dest)])
        err = capsys.readouterr().err
    assert code == 2 and f"pid {os.getpid()}" in err and "export destination" in err
    assert not dest.exists()
    assert lock_file(dest).exists()  # the lock lives in the cache, not beside the user's file
    assert not dest.parent.exists() or not any(dest.parent.iterdir())


def test_a_lock_names_its_holder_and_dies_with_it(tmp_path) -> None:
    target = tmp_path / "thing"
    code = (
        "import sys, time; from pathlib import Path; from boothkit.locks import Lock; "
        f"Lock(Path({str(target)!r}), 'test').acquire(); print('held', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(BoothkitError, match=rf"test {target} is being written .*pid {holder.pid}"):
            Lock(target, "test").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with Lock(target, "test"):  # the kernel let go of it with the process
        pass
