"""``FaultInjector``: an fsspec filesystem wrapper that fails the Nth primitive call, for deterministic
fault tests.

This is a MOCK of a fault, on purpose: a real disk or server fails at an arbitrary I/O step, and no real
component lets a test choose *which* step (the crash tests in test_crash_consistency.py kill real processes at
random moments; this wrapper walks every step one by one instead). Everything else is real: the wrapped
filesystem (local disk or SeaweedFS S3) does all I/O, and the fault is an ``OSError`` like the ones
backends raise.

Invariant: call number ``fail_at`` (1-based, counted over every primitive the store uses: ``pipe_file``,
``cat_file``, ``info``, ``ls``, ``rm_file``, ``rm``, ``mkdir``, ``makedirs``, ``exists``) raises instead of
completing; in ``torn`` mode a failing ``pipe_file`` first writes the first half of its bytes (a write cut
short
on a filesystem without atomic writes). Every other call is passed through unchanged.
"""

from __future__ import annotations

import errno
from typing import Any, Literal

import fsspec

Mode = Literal["raise", "torn"]


class InjectedFault(OSError):
    """The failure ``FaultInjector`` raises at its chosen step."""


class FaultInjector(fsspec.AbstractFileSystem):  # type: ignore[misc]
    """Pass every call to ``target``; make call ``fail_at`` fail (``None``: only count)."""

    protocol = ("faulty",)
    cachable = False

    def __init__(
        self, target: fsspec.AbstractFileSystem, *, fail_at: int | None = None, mode: Mode = "raise"
    ) -> None:
        super().__init__()
        self.target = target
        self.fail_at = fail_at
        self.mode = mode
        self.calls: list[tuple[str, str]] = []
        self.fired: tuple[str, str] | None = None

    def _strip_protocol(self, path: Any) -> Any:
        return self.target._strip_protocol(path)

    def _step(self, name: str, path: Any, data: bytes | None = None) -> None:
        self.calls.append((name, str(path)))
        if self.fail_at is None or len(self.calls) != self.fail_at:
            return
        self.fired = (name, str(path))
        if self.mode == "torn" and name == "pipe_file" and data is not None:
            self.target.pipe_file(path, data[: len(data) // 2])
        raise InjectedFault(errno.EIO, f"injected fault at I/O step {self.fail_at} ({name} {path})")

    def pipe_file(self, path: str, value: bytes, **kwargs: Any) -> Any:
        self._step("pipe_file", path, value)
        return self.target.pipe_file(path, value, **kwargs)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> Any:
        self._step("cat_file", path)
        return self.target.cat_file(path, start=start, end=end, **kwargs)

    def info(self, path: str, **kwargs: Any) -> Any:
        self._step("info", path)
        return self.target.info(path, **kwargs)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> Any:
        self._step("ls", path)
        return self.target.ls(path, detail=detail, **kwargs)

    def rm_file(self, path: str) -> Any:
        self._step("rm_file", path)
        return self.target.rm_file(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> Any:
        self._step("rm", path)
        return self.target.rm(path, recursive=recursive, maxdepth=maxdepth)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> Any:
        self._step("mkdir", path)
        return self.target.mkdir(path, create_parents=create_parents, **kwargs)

    def makedirs(self, path: str, exist_ok: bool = False) -> Any:
        self._step("makedirs", path)
        return self.target.makedirs(path, exist_ok=exist_ok)

    def exists(self, path: str, **kwargs: Any) -> bool:
        self._step("exists", path)
        return bool(self.target.exists(path, **kwargs))

    def invalidate_cache(self, path: str | None = None) -> None:
        self.target.invalidate_cache(path)
