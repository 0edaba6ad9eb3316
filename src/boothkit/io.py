"""Atomic writes: a file boothkit writes is either the old one or the complete new one, never half.

Each write goes to a temporary name in the same folder, is flushed and fsynced, then renamed over
the destination (rename is atomic within a filesystem), and the folder is fsynced so the rename
itself survives a power cut.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch

from boothkit.errors import BoothkitError


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _plain_mode(tmp: Path, base: int) -> None:
    """Give a temporary file (0o666) or folder (0o777) the mode a plain open/mkdir would have had.

    mkstemp and mkdtemp make them private (0o600 / 0o700); without this, every file boothkit
    writes (a LoRA to hand to ComfyUI running as another user, say) would be readable by its owner only.
    """
    os.chmod(tmp, base & ~_current_umask())


def require_empty_folder(path: str | Path, flag: str, hint: str) -> Path:
    """``path`` as a Path, if it is missing or an empty folder; else refuse, having written nothing."""
    folder = Path(path)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "a file" if not folder.is_dir() else "not empty"
        raise BoothkitError(f"{flag} {folder}: not an empty folder ({what}); nothing was written", hint=hint)
    return folder


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` then move tmp_path onto `path` atomically. Returns `path`."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        _plain_mode(tmp, 0o666)
        with tmp.open("rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dest.parent)
    return dest


def atomic_write_dir(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_dir)` on a fresh folder beside `path`, then put it in place of `path`.

    An existing folder is renamed aside first and removed after, so `path` is always either the old
    folder or the complete new one; a failed `write` leaves the old folder untouched.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        write(tmp)
        _plain_mode(tmp, 0o777)
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(dest.parent)
    return dest


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def atomic_save_safetensors(
    tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(
        path, lambda tmp: safetensors.torch.save_file(contiguous, str(tmp), metadata=metadata)
    )


def atomic_save_image(image: Any, path: str | Path, **save_kwargs: Any) -> Path:
    """Save a PIL image atomically; the format comes from the destination's suffix."""
    fmt = Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt, **save_kwargs))
