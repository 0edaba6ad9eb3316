"""The one error type users see: a message that names the value and says what to do."""

from __future__ import annotations


class BoothkitError(Exception):
    """A problem with the user's input or environment, reported without a traceback (exit code 2)."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")


class TrainingInterrupted(BoothkitError):
    """Ctrl-C or SIGTERM: the step finished, a checkpoint was saved, the run can be resumed."""

    exit_code = 130


class WriteError(BoothkitError):
    """The environment refused a write (disk full, read-only, no permission): said, never a traceback."""
