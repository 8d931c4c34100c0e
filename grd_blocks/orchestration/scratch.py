"""Scratch folders of remote commands on a worker machine, removed even when their worker died mid-command.

Invariants:

- ``Scratch.make(root)`` creates a fresh folder ``{root}/grd-remote-*`` whose ``.owner`` file this process
  holds an exclusive ``flock`` on (taken before the file gets its name, so no sweeper ever sees it unlocked
  while its owner lives; the descriptor is close-on-exec, so a command never holds it).
- ``Scratch.close(keep=...)`` removes the folder, or with ``keep`` removes only ``.owner`` (the folder holds a
  log whose path the command's row names: it stays until its user removes it).
- ``sweep(root)`` removes every ``grd-remote-*`` folder whose ``.owner`` is not locked: the kernel drops a
  ``flock`` when its process dies, however it dies (SIGKILL included), so those are exactly the folders of
  workers that died mid-command. A folder being made, a kept log and a running command's folder are left
  alone. ``Scratch.make`` sweeps first, so a machine whose worker was killed loses that folder at the next
  remote command it runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["PREFIX", "Scratch", "sweep"]

PREFIX = "grd-remote-"
_OWNER = ".owner"


class Scratch:
    """One command's scratch folder, locked by this process until ``close``."""

    def __init__(self, path: Path, owner_fd: int) -> None:
        self.path = path
        self._owner_fd: int | None = owner_fd

    @classmethod
    def make(cls, root: Path | None = None) -> Scratch:
        base = Path(root or tempfile.gettempdir())
        sweep(base)
        path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
        unnamed = path / f"{_OWNER}.new"
        fd = os.open(unnamed, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(unnamed, path / _OWNER)
        return cls(path, fd)

    def close(self, *, keep: bool = False) -> None:
        """Remove the folder, or with ``keep`` leave its files (no longer swept) and remove only the lock."""
        if keep:
            with contextlib.suppress(FileNotFoundError):
                (self.path / _OWNER).unlink()
        else:
            shutil.rmtree(self.path, ignore_errors=True)
        if self._owner_fd is not None:
            os.close(self._owner_fd)
            self._owner_fd = None


def sweep(root: Path) -> list[Path]:
    """Remove the scratch folders in ``root`` whose worker died before closing them; the folders removed."""
    removed = []
    for folder in root.glob(f"{PREFIX}*"):
        try:
            fd = os.open(folder / _OWNER, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:  # no owner: a kept log or a folder being made; or not ours to open
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its worker is running the command
                continue
            if not (folder / _OWNER).exists():  # closed with ``keep`` while this sweep waited for the file
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(fd)
    return removed
