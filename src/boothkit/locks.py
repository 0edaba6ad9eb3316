"""One writer at a time: exclusive locks that die with their process.

A run folder, a class-image bank entry and an export destination each get an OS lock (`flock`) on
a small file under the cache (`cache_root()/locks/`, named by a hash of the locked path), never a
file in the user's folders and never a stale marker: the kernel releases the lock when its process
ends, however it ends, so a killed run never blocks its own resume. The holder writes who it is
into the lock file, so a refused second writer can say which process holds it and since when.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from boothkit.errors import BoothkitError
from boothkit.io import cache_root


def lock_file(path: Path) -> Path:
    """The lock file of ``path`` (which need not exist yet): one per real path."""
    key = os.path.realpath(path.expanduser())
    return cache_root() / "locks" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.lock"


def holder_text(info: dict[str, Any]) -> str:
    """'pid 1234 on host, since 2026-12-08T10:00:00+00:00: boothkit train ...' (what is known of it)."""
    parts = [f"pid {info.get('pid', '?')}"]
    if info.get("host") and info.get("host") != socket.gethostname():
        parts[0] += f" on {info['host']}"
    if info.get("started"):
        parts.append(f"since {info['started']}")
    text = ", ".join(parts)
    return text + (f": {info['command']}" if info.get("command") else "")


class Lock:
    """An exclusive lock on ``path`` for ``what`` it is ("run folder", "export destination", ...)."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self.file = lock_file(path)
        self._fd: int | None = None

    def acquire(self, *, wait: bool = False, waiting: Callable[[str], None] | None = None) -> Lock:
        """Take the lock; if another process holds it, refuse (or, with ``wait``, say so and wait)."""
        self.file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = holder_text(self._read(fd))
                if not wait:
                    raise BoothkitError(
                        f"{self.what} {self.path} is being written by another boothkit process ({holder}); "
                        "nothing was changed",
                        hint="wait for it to finish, or stop it (Ctrl-C saves a checkpoint); a lock ends with "
                        "its process, so a stopped or killed run never blocks its resume",
                    ) from None
                if waiting is not None:
                    waiting(
                        f"waiting for the {self.what} {self.path}, which another process is writing ({holder})"
                    )
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
            "command": shlex.join(["boothkit", *sys.argv[1:]]) if sys.argv else "",
            "path": str(self.path),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        for _ in range(3):  # the holder may be writing its details this very moment
            try:
                data = json.loads(os.pread(fd, 1 << 16, 0).decode() or "{}")
                return data if isinstance(data, dict) else {}
            except (ValueError, UnicodeDecodeError):
                time.sleep(0.05)
        return {}

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Lock:
        return self.acquire() if self._fd is None else self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()


__all__ = ["Lock", "holder_text", "lock_file"]
