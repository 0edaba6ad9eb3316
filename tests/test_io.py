"""Atomic folder writes: a folder is either the old one or the complete new one."""

from __future__ import annotations

from pathlib import Path

import pytest

from boothkit.errors import WriteError
from boothkit.io import atomic_write_dir


def test_atomic_write_dir_replaces_a_folder_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "model"
    atomic_write_dir(target, lambda d: (d / "a.txt").write_text("one"))
    atomic_write_dir(target, lambda d: (d / "b.txt").write_text("two"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_a_failed_write_keeps_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "model"
    atomic_write_dir(target, lambda d: (d / "a.txt").write_text("one"))

    def broken(d: Path) -> None:
        (d / "half.txt").write_text("partial")
        raise OSError("disk full")

    with pytest.raises(WriteError, match=r"could not write .*model \(disk full\)"):  # said, not a traceback
        atomic_write_dir(target, broken)
    assert (target / "a.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_written_files_and_folders_get_the_umask_mode_not_a_private_one(tmp_path: Path) -> None:
    import os
    import stat

    from boothkit.io import atomic_write_dir, atomic_write_text

    old = os.umask(0o022)
    try:
        f = atomic_write_text(tmp_path / "lora.safetensors", "x")
        d = atomic_write_dir(tmp_path / "model", lambda tmp: (tmp / "config.json").write_text("{}"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert stat.S_IMODE(d.stat().st_mode) == 0o755
