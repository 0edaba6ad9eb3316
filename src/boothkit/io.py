"""Atomic writes: a file boothkit writes is either the old one or the complete new one, never half.

Each write goes to a temporary name in the same folder, is flushed and fsynced, then renamed over
the destination (rename is atomic within a filesystem), and the folder is fsynced so the rename
itself survives a power cut.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from boothkit.errors import BoothkitError, WriteError


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


def cache_root() -> Path:
    """Where boothkit keeps what it can remake (the class-image bank, locks): $BOOTHKIT_CACHE, else
    $XDG_CACHE_HOME/boothkit, else ~/.cache/boothkit."""
    if root := os.environ.get("BOOTHKIT_CACHE"):
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "boothkit"


def require_empty_folder(path: str | Path, flag: str, hint: str) -> Path:
    """``path`` as a Path, if it is missing or an empty folder; else refuse, having written nothing."""
    folder = Path(path)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        what = "a file" if not folder.is_dir() else "not empty"
        raise BoothkitError(f"{flag} {folder}: not an empty folder ({what}); nothing was written", hint=hint)
    return folder


def environment_hint(error: BaseException) -> str:
    """What to do about an error the environment raised (a full disk, a read-only folder, a loop of
    symbolic links), from its errno or, for safetensors' own errors, the system message inside."""
    code = getattr(error, "errno", None)
    text = f"{getattr(error, 'strerror', '')} {error}".lower()
    if code == errno.ENOSPC or "no space" in text or "storagefull" in text:
        return "free some disk space (or write somewhere else) and run the command again"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS) or "permission" in text or "read-only" in text:
        return "choose a folder you can write to, or fix its permissions"
    if code == errno.ELOOP:
        return "a symbolic link points back into itself: fix the link or pass the real folder"
    if code == errno.EISDIR:
        return "that is a folder: pass the file"
    if code == errno.ENOTDIR:
        return "a part of that path is a file, not a folder"
    return "check the path and the disk, then run the command again"


def write_failure(dest: Path, error: BaseException) -> WriteError:
    """What a failed write tells a person: the file, the system's reason, and what to do about it.

    A full disk reaches boothkit as an OSError, or from safetensors' writer as its own error with
    the system's message inside; both are the environment's fault, not a bug to report.
    """
    reason = getattr(error, "strerror", None) or str(error).splitlines()[0][:300] or type(error).__name__
    return WriteError(
        f"could not write {dest} ({reason}); the previous version, if any, is intact",
        hint=environment_hint(error),
    )


def atomic_write(
    path: str | Path,
    write: Callable[[Path], None],
    *,
    suffix: str = ".tmp",
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Call `write(tmp_path)` (then `check(tmp_path)`, which may refuse it) and move tmp_path onto
    `path` atomically. Returns `path`. The temporary name keeps ``suffix`` (a reader may need
    `.safetensors`); a write the environment refuses (disk full, read-only) is a :class:`WriteError`."""
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    except OSError as e:
        raise write_failure(dest, e) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            write(tmp)
            _plain_mode(tmp, 0o666)
            with tmp.open("rb+") as fh:
                fh.flush()
                os.fsync(fh.fileno())
        except (OSError, SafetensorError) as e:
            raise write_failure(dest, e) from None
        if check is not None:
            check(tmp)
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
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    except OSError as e:
        raise write_failure(dest, e) from None
    try:
        try:
            write(tmp)
            _plain_mode(tmp, 0o777)
        except (OSError, SafetensorError) as e:
            raise write_failure(dest, e) from None
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


def remove_stale_temporaries(folder: Path, name: str = "") -> list[Path]:
    """Remove what a killed writer left in ``folder`` for ``name`` (every name when empty): the
    hidden temporary files and folders :func:`atomic_write` and :func:`atomic_write_dir` use.
    Call it only while holding the lock on what is written there (no live writer's file is taken)."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        stale = path.name.startswith(f".{name}") and (
            ".tmp" in path.name or ".partial-" in path.name or ".old-" in path.name
        )
        if not stale:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


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
    # safetensors.torch loads torch: imported here so that the CLI, which uses this module for its
    # messages, keeps --help instant.
    import safetensors.torch

    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(
        path, lambda tmp: safetensors.torch.save_file(contiguous, str(tmp), metadata=metadata)
    )


def atomic_save_image(image: Any, path: str | Path, **save_kwargs: Any) -> Path:
    """Save a PIL image atomically; the format comes from the destination's suffix."""
    fmt = Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"
    return atomic_write(path, lambda tmp: image.save(tmp, format=fmt, **save_kwargs))
