"""The errors bnexp reports to a user as one line, without a traceback. A leaf: nothing of bnexp."""

from __future__ import annotations

from hydra.errors import CompactHydraException


class UserError(CompactHydraException):
    """A mistake in the user's input (a setting, a path, a run dir in use): one line,
    `bnexp: error: <message>`, exit code 2. Hydra, too, prints it without a traceback."""

    def __init__(self, message: str):
        super().__init__(f"bnexp: error: {message}")


class RunFailed(RuntimeError):
    """A fault that ends a run as `failed` with this message: an unreadable data file, a write to a
    full disk or a vanished directory. The run's checkpoints stay; resume continues it once fixed."""


class RunDirInUse(UserError):
    """Another process holds the run dir's lock (bnexp/rundir.py): refused before anything is written."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """An error's message on one line, for a one-line report."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
