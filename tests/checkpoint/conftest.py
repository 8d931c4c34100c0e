"""Backends every checkpoint contract test runs against: local disk, fsspec memory, SeaweedFS S3."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import fsspec
import pytest

from grd_blocks.checkpoint import CheckpointEngine, RunCheckpoints


@dataclass
class Backend:
    """One store location plus the fsspec options to reach it."""

    name: str
    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    def engine(self, **options: Any) -> CheckpointEngine:
        return CheckpointEngine(self.url, storage_options=self.storage_options, **options)

    def run(self, run_key: str = "run", **options: Any) -> RunCheckpoints:
        return self.engine(**options).run(run_key)


IO_METHODS = frozenset(
    {
        "cat_file",
        "cat",
        "info",
        "ls",
        "find",
        "exists",
        "pipe_file",
        "pipe",
        "open",
        "rm",
        "rm_file",
        "isdir",
        "isfile",
        "glob",
        "du",
        "walk",
        "size",
        "head",
        "mv",
        "copy",
        "put_file",
        "get_file",
    }
)


class RecordingFS:
    """Wraps a real filesystem and records every storage call (name, first argument) in order."""

    def __init__(self, fs: fsspec.AbstractFileSystem, fail: dict[str, BaseException] | None = None) -> None:
        self._fs = fs
        self.calls: list[tuple[str, str]] = []
        self.fail = dict(fail or {})

    @property
    def counts(self) -> Counter[str]:
        return Counter(name for name, _ in self.calls)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._fs, name)
        if name not in IO_METHODS or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, str(args[0]) if args else ""))
            if name in self.fail:
                raise self.fail[name]
            return attr(*args, **kwargs)

        return call


def recording_run(
    backend: Backend, run_key: str = "run", **options: Any
) -> tuple[RunCheckpoints, RecordingFS]:
    """A RunCheckpoints over ``backend`` whose filesystem calls are recorded."""
    engine = backend.engine(**options)
    recorder = RecordingFS(engine.fs)
    engine.fs = cast(fsspec.AbstractFileSystem, recorder)
    return engine.run(run_key), recorder


@pytest.fixture(params=["local", "memory", pytest.param("s3", marks=pytest.mark.s3)])
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    yield from _backend(request, tmp_path)


@pytest.fixture(params=["memory", pytest.param("s3", marks=pytest.mark.s3)])
def object_backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    """The backends whose commits go through fsspec calls (``pipe_file``), where faults can be injected;
    local commits go through os (fsync + rename) and are faulted for real (a full tmpfs)."""
    yield from _backend(request, tmp_path)


def _backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    if request.param == "local":
        yield Backend("local", str(tmp_path / "store"))
    elif request.param == "memory":
        url = f"memory://grd-test-{uuid.uuid4().hex[:12]}"
        yield Backend("memory", url)
        fs = fsspec.filesystem("memory")
        if fs.exists(url):
            fs.rm(url, recursive=True)
    else:
        try:
            server = request.getfixturevalue("s3_server")
        except pytest.FixtureLookupError:
            pytest.skip("the s3_server fixture (tests/fixtures/s3_server.py) is not available")
        yield Backend("s3", f"{server.new_bucket()}/ckpts", dict(server.storage_options))


@pytest.fixture
def store_url(backend: Backend) -> str:
    """The store URL of the parametrized backend (local path, memory://..., s3://bucket/ckpts)."""
    return backend.url
