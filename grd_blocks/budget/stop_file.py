"""A command's mark that it stopped for its budget, which survives whatever exit code a launcher makes of it.

Invariant: grd hands every command attempt ``GRD_TIMEOUT_FILE``, a path no other attempt is given (a random
name in a private directory the grd process makes once, mode 0700, removed at its exit and made again if
something removed it), so the file never exists when the attempt starts; grd removes it once the attempt's
report row is written. A process
of the command that stops because its budget ran out creates that file before it exits; grd then reports the
command TIMEOUT with exit code 124 even when a launcher (torchrun, mpirun, a shell script) turned the rank's
124 into something else, and keeps the launcher's own code in the row. A process that fails for any other
reason never creates it, so a crash stays FAILED. ``mark_budget_stop()`` is what grd's training helpers call:
idempotent (every rank may call it), it never raises, and outside grd (no ``GRD_TIMEOUT_FILE``) it does
nothing. From a shell: ``touch "$GRD_TIMEOUT_FILE"``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Mapping

__all__ = ["TIMEOUT_FILE_ENV", "budget_stop_marked", "forget", "fresh_timeout_file", "mark_budget_stop"]

TIMEOUT_FILE_ENV = "GRD_TIMEOUT_FILE"

_lock = threading.Lock()
_folder: str | None = None


def fresh_timeout_file() -> str:
    """A path for one attempt's mark that no other attempt is given and that does not exist yet (about 10 us:
    one private directory per grd process, not one per attempt). ``OSError`` if no temporary directory can
    be made."""
    global _folder
    with _lock:
        if _folder is None or not os.path.isdir(_folder):
            _folder = tempfile.mkdtemp(prefix="grd-timeout-files-")
            atexit.register(shutil.rmtree, _folder, True)
        folder = _folder
    return os.path.join(folder, f"{secrets.token_hex(16)}.stopped-for-budget")  # a str: see exclusive.claim


def forget(path: str | os.PathLike[str]) -> None:
    """Remove an attempt's mark once its row is written (nothing if it was never made)."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def mark_budget_stop(env: Mapping[str, str] | None = None) -> bool:
    """Create ``$GRD_TIMEOUT_FILE`` (this process stops for its budget); True when the mark is there."""
    path = (os.environ if env is None else env).get(TIMEOUT_FILE_ENV, "")
    if not path:
        return False
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        return True
    return False


def budget_stop_marked(path: str | os.PathLike[str]) -> bool:
    """True when a process of the command created ``path`` (a regular file or anything else: it is a mark)."""
    return os.path.lexists(path)
