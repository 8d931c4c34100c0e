"""Sharded checkpoints (FSDP2, ``torch.distributed.checkpoint``): every rank writes its shards, one
manifest-last commit for all ranks, verified and resharded on load.

Invariants:

* A sharded save of ``{unit}_{N}`` is one commit of the run's commit protocol (storage/commit.py), the same
  as a single-file save: rank 0 creates a fresh staging folder (``CommitProtocol.stage``: unique to this
  save, never reused, invisible to readers); every rank writes its DCP shards into it and hashes the files it
  wrote itself (the store's digest, payload/hashes.py), each file fsynced while it is hashed (before the
  gather: every shard is durable before the manifest can name it), then its pages dropped from the page cache
  (``GRD_CHECKPOINT_DIRECT_IO=0`` keeps them); the entries are gathered
  on every rank; rank 0 then writes DCP's ``.metadata`` (fsynced), hashes it and commits ``MANIFEST.json``,
  which lists every file of every rank (``commit_staged``: one rename on local disk); only after that does
  LATEST.json move (never backwards), and retention and the staging sweep run (run.py). A rank that dies at
  any moment before that rename leaves only a staging folder no reader looks at (swept once its writer is
  gone: staging.py): the previous checkpoint stays the latest.
* Every rank calls ``save_sharded``/``load_sharded`` (collectives, in the same order) and every rank gets the
  same answer: the same ``CheckpointRef``, or an error on every rank (rank 0 raises the original; the others
  a ``CheckpointError`` naming it).
* A load verifies every file of the checkpoint it is about to read (size and digests; the files are split
  among the ranks and the verdicts gathered on every rank) before DCP reads a byte of it; then every file DCP
  opens is hashed again from the descriptor it reads (``_verified_files``), so bytes changed in between are
  refused, never deserialized. On any mismatch
  every rank moves to the same older checkpoint (rank 0 chooses, by the reader's fallback order, and
  broadcasts), and rank 0 says so in one WARNING line. With ``step``/``epoch`` damage raises
  ``CheckpointCorrupt`` on every rank.
* Nothing read from the store is unpickled beyond a fixed set of types: DCP's ``.metadata`` goes through an
  allowlist of DCP's own metadata types (``_SafeUnpickler``), non-tensor values through
  ``torch.load(weights_only=True)``, tensors through DCP's own ``weights_only=True`` load.
* Resharding is DCP's: a checkpoint saved on N ranks loads on M (FSDP2 model and optimizer state through
  ``torch.distributed.checkpoint.state_dict``).

On local disk the staging folder is ``{run}/.tmp-{unit}_{N}-...`` and the commit renames it to
``{unit}_{N}``, so its files keep DCP's own names (``__0_0.distcp``, ``.metadata``: plain DCP can read a
committed checkpoint). On an object store the ranks write straight into ``{unit}_{N}/`` under names that begin
with the save's own token (``{token}__0_0.distcp``, ``{token}.metadata``), so no object of an earlier version
is ever overwritten; the manifest's one PUT is the commit, and the objects of the version it replaced are
deleted only after it (commit.py). On S3 each rank's shard file goes up while DCP writes it, as a multipart
upload with several parts in flight, each 8 MiB piece hashed once on its way (the server checks each part's
CRC32), so no rank waits for another's upload but at the gather before the commit; on other object stores
the shards are hashed as the store holds them (read back).

Background saves (``save_sharded_async``):

* The call blocks only while the state is staged: every tensor, and the local shard of every DTensor, copied
  to host memory (``SnapshotBuffers.copy_sharded``: reused buffers); other values deep-copied. The state may
  change as soon as the call returns: what is committed is what it held at the call.
* The write is ``write_sharded`` on the run's ``ShardedWriter`` thread (async_writer.py): the protocol of a
  synchronous save above, so the manifest is committed only once every rank's write completed, then
  LATEST.json, retention after it.
* Checkpoint traffic never shares a process group with the training loop: at its first
  ``save_sharded_async`` every rank creates one gloo group of all ranks for this run
  (``dist.new_group(backend="gloo")``: a collective on the default group, in the caller's thread); every
  collective of its background saves (DCP's own included) goes over it, from the one writer thread, in the
  same order on every rank, so the loop's collectives on the default group may run at the same time.
* Which save is written is agreed (saves not yet started when a newer one comes are superseded on every rank
  alike: async_writer.py), so every rank runs the same collectives.
* A failure on any rank fails that save on every rank (nothing committed, its staging dropped); every rank
  raises it at its next ``save_sharded_async``, ``save_sharded``, ``load_sharded`` or ``flush()`` (the latter
  three wait for the writer first; ``flush`` issues no collective).

Kill trials (tests/checkpoint/sharded_kills.py, docs/fsdp.md): one rank or all SIGKILLed at random moments of
synchronous and background saves, on local disk and on S3, judged by an independent reader: no torn
checkpoint, LATEST.json always names a whole one that loads on 1 and on 2 ranks.

Limits: every rank must make the same calls in the same order; a call that raises on one rank only before
it staged (e.g. host memory exhausted) leaves the other ranks' writers waiting for that rank's next call.
Synchronous saves use the default process group only; a load hashes the files a rank reads twice (its share
of the shared verification, then what DCP reads), and on S3 downloads them twice.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final

import fsspec

from grd_blocks.checkpoint.async_writer import ShardedWriter
from grd_blocks.checkpoint.observers import Observer, bind_automatic
from grd_blocks.checkpoint.payload.digest import digest_later, entry_of_fd, verify_fd
from grd_blocks.checkpoint.payload.hashes import save_algorithm
from grd_blocks.checkpoint.payload.manifest import (
    GRD_VERSION,
    FileEntry,
    Manifest,
    Unit,
    now_iso,
    writer_id,
)
from grd_blocks.checkpoint.payload.serialization import PieceStream, without_zip_crc
from grd_blocks.checkpoint.refs import CheckpointRef
from grd_blocks.checkpoint.storage import s3parts
from grd_blocks.checkpoint.storage.commit import page_cache_kept
from grd_blocks.checkpoint.storage.fsio import guard
from grd_blocks.checkpoint.storage.layout import MANIFEST_NAME, checkpoint_dirname, join
from grd_blocks.checkpoint.storage.safe_io import open_local
from grd_blocks.errors import CheckpointCorrupt, CheckpointError, GrdError, UsageError

if TYPE_CHECKING:
    from grd_blocks.checkpoint.run import RunCheckpoints

logger = logging.getLogger("grd.checkpoint")

PAYLOAD_FORMAT: Final = "dcp"
"""``Manifest.payload_format`` of a sharded checkpoint."""
DCP_METADATA: Final = ".metadata"
"""DCP's metadata file (written by rank 0 after every shard, before grd's manifest)."""


# ---------------------------------------------------------------------------------------------- collectives
@dataclass(frozen=True)
class _Failed:
    """A failure on one rank, as the others learn of it (an exception itself may not survive pickling)."""

    rank: int
    kind: str
    message: str

    def error(self) -> CheckpointError:
        return CheckpointError(f"rank {self.rank} failed: {self.kind}: {self.message}")


def _active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if _active() else 0


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if _active() else 1


def _broadcast(value: Any, group: Any = None) -> Any:
    """Rank 0's ``value`` on every rank (over ``group``: None is the default process group)."""
    if not _active():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def _all_gather(value: Any, group: Any = None) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank (over ``group``)."""
    if not _active():
        return [value]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value, group=group)
    return out


def _failed(exc: BaseException) -> _Failed:
    return _Failed(_rank(), type(exc).__name__, str(exc))


def _raise_agreed(outcome: object, own: BaseException | None) -> None:
    """Raise on every rank when ``outcome`` is a failure: this rank's own error if it had one."""
    if isinstance(outcome, _Failed):
        if own is not None:
            raise own
        raise outcome.error()


# ---------------------------------------------------------------------------------------------- DCP glue
def _fsspec_filesystem(
    fs: fsspec.AbstractFileSystem, sent: dict[str, FileEntry] | None = None, algorithm: str = ""
) -> Any:
    """DCP's fsspec filesystem adapter over the store's own filesystem object (its options, credentials).

    With ``sent`` on S3 (``s3parts.usable``), each file DCP writes goes up while DCP writes it: a multipart
    upload with ``s3client.TRANSFER_THREADS`` parts in flight, each 8 MiB piece hashed once on the way, and
    the file's ``FileEntry`` (``algorithm``) recorded in ``sent`` under its name once the object exists
    (s3fs's own file sends one part at a time, from the writing thread, and the bytes had to be read back to
    be hashed)."""
    from torch.distributed.checkpoint._fsspec_filesystem import FileSystem

    class _Uploading(FileSystem):
        @contextlib.contextmanager
        def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[Any]:
            if mode != "wb" or sent is None:
                with super().create_stream(path, mode) as stream:
                    yield stream
                return
            where = os.fspath(path)
            feed = PieceStream.fed(readers=2, window=s3parts.stream_window(fs))
            entry = digest_later(feed.stream, algorithm)
            upload = _Upload(fs, where, feed.stream)
            try:
                yield feed
                feed.close()
            except BaseException as exc:
                feed.abandon(exc)
                failed = upload.wait()
                if failed is not None:  # the upload's own failure is why the writing stopped
                    raise failed from exc
                raise
            failed = upload.wait()
            if failed is not None:
                raise failed
            sent[where.rsplit("/", 1)[-1]] = entry()

    adapter = _Uploading() if sent is not None and s3parts.usable(fs) else FileSystem()
    adapter.fs = fs
    return adapter


class _Upload:
    """``s3parts.put_object`` of a stream on a thread of its own (the stream is written meanwhile)."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, stream: PieceStream) -> None:
        self._error: BaseException | None = None

        def run() -> None:
            try:
                s3parts.put_object(fs, path, stream)
            except BaseException as exc:  # raised by ``wait``, in the writing thread
                self._error = exc
                stream.fail(exc)

        self._thread = threading.Thread(target=run, name="grd-shard-upload", daemon=True)
        self._thread.start()

    def wait(self) -> BaseException | None:
        """What made the upload fail, once it ended (None: the object exists)."""
        self._thread.join()
        return self._error


def _metadata_name(plan: _Plan) -> str:
    """DCP's metadata file of a save: ``.metadata`` in a fresh folder, ``{token}.metadata`` in place."""
    return f"{plan.token}{DCP_METADATA}" if plan.in_place else DCP_METADATA


def _writer(run: RunCheckpoints, plan: _Plan) -> Any:
    import dataclasses

    from torch.distributed.checkpoint.filesystem import (
        CURRENT_DCP_VERSION,
        FileSystemWriter,
        _StoragePrefix,
    )
    from torch.futures import Future

    class _Writer(FileSystemWriter):
        """DCP's file writer that records the files this rank wrote and holds back the metadata until the
        shards are hashed (``write_metadata``). In place (object stores) every file name starts with the
        save's token, so no earlier version's object is ever overwritten."""

        def __init__(self) -> None:
            # no fsync by DCP: on local disk _hash_written fsyncs each shard while hashing it (the hash
            # overlaps the wait for the disk); an object's PUT is durable already
            super().__init__(plan.staged, single_file_per_rank=True, sync_files=False, overwrite=False)
            self.sent: dict[str, FileEntry] = {}  # files already hashed on their way up (S3)
            if plan.in_place:
                self.fs, self.path = _fsspec_filesystem(run.fs, self.sent, plan.digest), plan.staged
            self.written: list[str] = []
            self._pending: tuple[Any, Any] | None = None

        def prepare_global_plan(self, plans: list[Any]) -> list[Any]:
            if not plan.in_place:
                return list(super().prepare_global_plan(plans))
            return [dataclasses.replace(each, storage_data=_StoragePrefix(f"{plan.token}__{number}_"))
                    for number, each in enumerate(plans)]

        def write_data(self, save_plan: Any, planner: Any) -> Future[list[Any]]:
            with without_zip_crc():  # DCP torch.saves each tensor; grd's digests cover every byte written
                future = super().write_data(save_plan, planner)
            self.written = sorted({str(result.storage_data.relative_path) for result in future.value()})
            return future

        def finish(self, metadata: Any, results: Any) -> None:
            self._pending = (metadata, results)  # written by write_metadata, after the shards are hashed

        def write_metadata(self) -> None:
            if self._pending is None:
                raise CheckpointError(f"{plan.staged}: DCP never finished this save (no metadata to write)")
            if not plan.in_place:
                super().finish(*self._pending)  # .metadata.tmp, fsync, rename: DCP's own
                return
            metadata, results = self._pending  # what DCP's finish does, as one PUT under a fresh name
            metadata.version = CURRENT_DCP_VERSION
            metadata.storage_data = {item.index: item.storage_data for items in results for item in items}
            metadata.storage_meta = self.storage_meta()
            run.fs.pipe_file(join(plan.staged, _metadata_name(plan)), pickle.dumps(metadata))

    return _Writer()


_ALLOWED: Final = {
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("collections", "OrderedDict"),
}
_ALLOWED_MODULES: Final = ("torch.distributed.checkpoint.metadata",)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` and nothing else: DCP's metadata classes, torch sizes, dtypes and
    layouts, paths; any other global raises ``CheckpointCorrupt``."""

    def __init__(self, data: io.BytesIO, where: str) -> None:
        super().__init__(data)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        import torch

        if (module, name) in _ALLOWED or (module in _ALLOWED_MODULES and not name.startswith("__")):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise CheckpointCorrupt(
            f"{self.where} refers to {module}.{name}, which is not one of DCP's metadata types; grd never "
            "unpickles arbitrary objects (it was damaged or not written by grd)"
        )


def _parse_metadata(data: bytes, where: str) -> Any:
    """DCP's ``Metadata`` from the bytes of a ``.metadata`` file; ``CheckpointCorrupt`` naming ``where`` for
    anything else (a global outside DCP's metadata types is never resolved, so never run)."""
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        metadata = _SafeUnpickler(io.BytesIO(data), where).load()
    except CheckpointCorrupt:
        raise
    except Exception as exc:
        raise CheckpointCorrupt(f"{where} is not DCP metadata ({type(exc).__name__}: {exc})") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointCorrupt(f"{where} holds a {type(metadata).__name__}, not DCP metadata")
    return metadata


def _verified_files(run: RunCheckpoints, candidate: _Candidate) -> Any:
    """DCP's filesystem for reading ``candidate``: every file DCP opens is one its manifest lists, opened
    without following links (local disk) and hashed from the very descriptor DCP then reads (an object:
    fetched and verified whole, s3parts.get_verified), so bytes swapped in after the ranks' shared
    verification are refused (``CheckpointCorrupt``), never deserialized."""
    from torch.distributed.checkpoint.filesystem import FileSystem

    name = candidate.ref.name

    class _VerifiedFiles(FileSystem):
        @contextlib.contextmanager
        def create_stream(self, path: str | os.PathLike[str], mode: str) -> Iterator[Any]:
            file_name = os.path.basename(os.fspath(path))
            where = join(run.url, name, file_name)
            entry = candidate.manifest.files.get(file_name)
            if mode != "rb" or entry is None:
                raise CheckpointCorrupt(f"{where} is not listed in its manifest; DCP's metadata names files "
                                        "the checkpoint does not hold (damaged or not written by grd)")
            if not run._local:
                yield io.BytesIO(run._fetch_remote(name, file_name, entry))
                return
            try:
                with guard(run.url, f"open {name}/{file_name}", missing_ok=True):
                    fd = open_local(run.path, (name, entry.object_name(file_name)), run.url)
            except FileNotFoundError:
                raise CheckpointCorrupt(f"{where} is missing") from None
            with os.fdopen(fd, "rb") as stream:
                verify_fd(fd, entry, where)
                yield stream

    return _VerifiedFiles()


def _reader(run: RunCheckpoints, candidate: _Candidate) -> Any:
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    folder = join(run.path, candidate.ref.name)
    metadata_name = _metadata_of(candidate)
    where = join(run.url, candidate.ref.name, metadata_name)

    class _Reader(FileSystemReader):
        """DCP's file reader over ``_verified_files``, whose metadata goes through ``_SafeUnpickler``."""

        def __init__(self) -> None:
            super().__init__(folder)
            self.fs, self.path = _verified_files(run, candidate), folder

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            with self.fs.create_stream(join(folder, metadata_name), "rb") as stream:
                metadata = _parse_metadata(stream.read(), where)
            storage_meta = metadata.storage_meta or StorageMeta()
            storage_meta.load_id = self.load_id
            metadata.storage_meta = storage_meta
            return metadata

    return _Reader()


def _planner() -> Any:
    import torch
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class _Planner(DefaultLoadPlanner):
        """DCP's load planner, but non-tensor values are read with ``torch.load(weights_only=True)``."""

        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            loaded = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return _Planner()


# ---------------------------------------------------------------------------------------------- saving
@dataclass(frozen=True)
class _Plan:
    """What rank 0 decided for a save, broadcast to every rank."""

    unit: Unit
    index: int
    digest: str
    staged: str
    token: str
    in_place: bool


def _hash_written(
    run: RunCheckpoints, plan: _Plan, names: list[str], sent: Mapping[str, FileEntry]
) -> dict[str, FileEntry]:
    """The ``FileEntry`` of each file this rank wrote: on S3 the one hashed as it went up (``sent``: each part
    carries a CRC32 the server checks, so the chunks hashed are the ones stored, as for single-file saves),
    hashed from the file on local disk (made durable meanwhile: its fsync runs while its chunks are hashed),
    from the object read back on other object stores."""
    entries: dict[str, FileEntry] = {}
    for name in names:
        path = join(plan.staged, name)
        if name in sent:
            entries[name] = sent[name]
            continue
        if plan.in_place:
            with guard(run.url, f"read back {name}"):
                entries[name] = digest_later(run.fs.cat_file(path), plan.digest)()
            continue
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            entries[name] = entry_of_fd(fd, plan.digest, meanwhile=partial(os.fsync, fd))
            _leave_page_cache(fd)
        finally:
            os.close(fd)
    return entries


def _leave_page_cache(fd: int) -> None:
    """Drop the pages of a shard file that is durable and hashed from the page cache (as a single-file save
    writes around it with ``O_DIRECT``): the memory goes back to the loop and the next save, which otherwise
    waited for the kernel to reclaim it (A/B in README, Checkpoint benchmarks); ``GRD_CHECKPOINT_DIRECT_IO=0``
    keeps them (a load right after the save then reads from memory)."""
    if not page_cache_kept() and hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


@dataclass(frozen=True)
class _Request:
    """Rank 0's part of a save (not broadcast): its name and what its manifest says besides the files."""

    unit: Unit
    index: int
    step: int | None
    epoch: int | None
    metrics: dict[str, float]
    metadata: dict[str, Any]
    digest: str
    observers: tuple[Observer, ...] = ()


def save_sharded(
    run: RunCheckpoints,
    state_dict: Mapping[str, Any],
    *,
    step: int | None = None,
    epoch: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> CheckpointRef:
    """Commit ``state_dict`` (a DCP state dict: DTensors, tensors, plain values) as ``step_{step}`` (or
    ``epoch_{epoch}``; neither: the step after the latest), written by every rank (module docstring)."""
    from grd_blocks.checkpoint.run import _metadata, _metrics

    run._sharded_wait()  # every rank: an in-flight save_sharded_async first (its failure raised everywhere)

    def decide() -> _Request:
        run.flush()  # an in-flight save_async of this prefix first
        unit, index = run._resolve_index(step, epoch)
        return _Request(unit, index, step, epoch, _metrics(metrics), _metadata(metadata), save_algorithm(),
                        tuple(bind_automatic()))

    return write_sharded(run, state_dict, decide, group=None)


def write_sharded(
    run: RunCheckpoints, state_dict: Mapping[str, Any], decide: Callable[[], _Request], *, group: Any
) -> CheckpointRef:
    """Every rank: write ``state_dict`` into the staging folder rank 0 made for ``decide()`` (called on rank 0
    only), hash, gather over ``group`` and commit on rank 0; the same ref, or an error, on every rank."""
    from torch.distributed.checkpoint.state_dict_saver import save

    rank = _rank()
    own: BaseException | None = None
    request: _Request | None = None
    decided: _Plan | _Failed
    if rank == 0:
        try:
            request = decide()
            name = checkpoint_dirname(request.unit, request.index)
            with guard(run.url, f"stage {name}"):
                staged = run._commit.stage(join(run.path, name))
            decided = _Plan(request.unit, request.index, request.digest, staged, uuid.uuid4().hex[:12],
                            run._commit.stages_in_place)
        except Exception as exc:
            own, decided = exc, _failed(exc)
    plan = _broadcast(decided if rank == 0 else None, group)
    _raise_agreed(plan, own)
    assert isinstance(plan, _Plan)

    from torch.distributed.checkpoint.api import CheckpointException

    writer = _writer(run, plan)
    written: dict[str, FileEntry] | _Failed
    name = checkpoint_dirname(plan.unit, plan.index)
    try:
        try:
            with warnings.catch_warnings():  # DCP warns that one process without a group saves alone
                warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
                save(dict(state_dict), storage_writer=writer, process_group=group, no_dist=not _active())
        except CheckpointException as exc:  # DCP's (a BaseException): it tells every rank of any failure
            raise CheckpointError(
                f"{join(run.url, name)}: torch.distributed.checkpoint could not write this state ({exc}); "
                "nothing was committed and the previous checkpoint stays the latest (save tensors, DTensors "
                "and picklable plain values only)"
            ) from exc
        written = _hash_written(run, plan, writer.written, writer.sent)
    except Exception as exc:  # hashing fails on this rank alone: every rank learns of it below
        own, written = exc, _failed(exc)
    gathered = _all_gather(written, group)
    failures = [item for item in gathered if isinstance(item, _Failed)]
    if failures:
        names = [name for item in gathered if isinstance(item, dict) for name in item]
        if rank == 0:
            run._commit.discard(plan.staged, names)
        _raise_agreed(failures[0], own)

    outcome: CheckpointRef | _Failed | None = None
    if rank == 0:
        assert request is not None
        try:
            outcome = _commit(run, plan, writer, gathered, request)
        except Exception as exc:
            names = [name for item in gathered for name in item]
            run._commit.discard(plan.staged, [*names, _metadata_name(plan)])
            own, outcome = exc, _failed(exc)
    outcome = _broadcast(outcome, group)
    _raise_agreed(outcome, own)
    assert isinstance(outcome, CheckpointRef)
    return outcome


def save_sharded_async(
    run: RunCheckpoints,
    state_dict: Mapping[str, Any],
    *,
    step: int | None,
    epoch: int | None,
    metrics: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
) -> None:
    """Stage ``state_dict`` on this rank (host copies) and hand its save to the run's ``ShardedWriter``
    (async_writer.py), whose thread runs ``write_sharded`` over its own process group (module docstring)."""
    from grd_blocks.checkpoint.run import _check_index, _metadata, _metrics

    if run._sharded is None:
        run._sharded = ShardedWriter(run.url, _all_gather)
    writer = run._sharded
    writer.ensure_group()
    number = writer.number()  # raises an earlier failure
    _check_index(step, epoch)  # these checks depend on the arguments alone: the same verdict on every rank
    metrics_, metadata_, digest = _metrics(metrics), _metadata(metadata), save_algorithm()
    observers = tuple(bind_automatic()) if _rank() == 0 else ()
    owned: list[Any] = []
    staged = writer.buffers.copy_sharded(state_dict, owned)

    def decide() -> _Request:  # rank 0, on the writer's thread, once the saves before it are committed
        run._writer.wait()  # a single-file save_async of this prefix first
        unit, index = run._resolve_index(step, epoch)
        return _Request(unit, index, step, epoch, metrics_, metadata_, digest, observers)

    what = f"step_{step}" if step is not None else f"epoch_{epoch}" if epoch is not None else f"#{number}"
    writer.submit(number, what, lambda group: write_sharded(run, staged, decide, group=group),
                  lambda: writer.buffers.release(owned))


def _commit(
    run: RunCheckpoints,
    plan: _Plan,
    writer: Any,
    gathered: list[dict[str, FileEntry]],
    request: _Request,
) -> CheckpointRef:
    """Rank 0, once every rank's shards are written and hashed: ``.metadata``, then the manifest (the
    commit), then LATEST.json, retention and the sweep (run.py)."""
    files: dict[str, FileEntry] = {}
    for entries in gathered:
        for file_name, entry in entries.items():
            if file_name in files or file_name in (_metadata_name(plan), MANIFEST_NAME):
                raise CheckpointError(f"{plan.staged}: two ranks wrote {file_name}; DCP gives every rank a "
                                      "prefix of its own, so another writer shares this staging folder")
            files[file_name] = entry
    name = checkpoint_dirname(plan.unit, plan.index)
    with guard(run.url, f"write {name}/{_metadata_name(plan)}"):
        writer.write_metadata()
    files.update(_hash_written(run, plan, [_metadata_name(plan)], writer.sent))
    manifest = Manifest(
        unit=plan.unit,
        index=plan.index,
        files=dict(sorted(files.items())),
        payload_format=PAYLOAD_FORMAT,
        handlers={},
        created_at=now_iso(),
        writer=writer_id(),
        metrics=request.metrics,
        metadata={"world_size": _world(), **request.metadata},
        step=request.step,
        epoch=request.epoch,
        grd_version=GRD_VERSION,
    )
    with guard(run.url, f"commit {name}"):
        run._commit.commit_staged(join(run.path, name), plan.staged, manifest.to_bytes())
    return run._committed(manifest, request.observers)


# ---------------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class _Candidate:
    """The checkpoint every rank is about to verify and load (rank 0's choice)."""

    ref: CheckpointRef
    manifest: Manifest


def _candidate(run: RunCheckpoints, step: int | None, epoch: int | None) -> _Candidate | None:
    """Rank 0: the checkpoint to try first (exactly step/epoch when given, else the latest)."""
    if step is not None or epoch is not None:
        ref = run.find(step=step, epoch=epoch)
        return _Candidate(ref, run._read_manifest(ref.name))
    found = run._latest(check_sizes=False)
    if found is None:
        return None
    ref, manifest = found
    return _Candidate(ref, manifest if manifest is not None else run._read_manifest(ref.name))


def _older(run: RunCheckpoints, below: CheckpointRef) -> _Candidate | None:
    """Rank 0: the newest checkpoint older than ``below`` whose manifest and sizes verify."""
    while True:
        ref = run._scan_newest(below=below.order)
        if ref is None:
            return None
        try:
            return _Candidate(ref, run._read_manifest(ref.name))
        except CheckpointCorrupt:
            below = ref


def _metadata_of(candidate: _Candidate) -> str:
    """The name of the candidate's DCP metadata file (``CheckpointCorrupt`` unless exactly one)."""
    names = [name for name in candidate.manifest.files if name.endswith(DCP_METADATA)]
    if len(names) != 1:
        raise CheckpointCorrupt(f"{candidate.ref.url}: its manifest lists {len(names)} DCP metadata files, "
                                "not one; it was damaged or not written by grd")
    return names[0]


def _check_kind(candidate: _Candidate) -> None:
    if candidate.manifest.payload_format != PAYLOAD_FORMAT:
        raise UsageError(
            f"{candidate.ref.url} is a single-file checkpoint (payload_format "
            f"{candidate.manifest.payload_format!r}), not a sharded one; load it with load(), or keep "
            "sharded and single-file saves under different prefixes"
        )


def _verify_share(run: RunCheckpoints, candidate: _Candidate) -> str | None:
    """This rank's share of the candidate's files (every ``world``-th, by name), verified: the first
    problem found, or None."""
    names = sorted(candidate.manifest.files)[_rank() :: _world()]
    name = candidate.ref.name
    try:
        metadata_name = _metadata_of(candidate)
        for file_name in names:
            entry = candidate.manifest.files[file_name]
            where = join(run.url, name, file_name)
            if not run._local:  # fetched and verified (s3parts.get_verified), then dropped
                blob = run._fetch_remote(name, file_name, entry)
                if file_name == metadata_name:
                    _parse_metadata(bytes(blob), where)
                continue
            try:
                with guard(run.url, f"verify {name}/{file_name}", missing_ok=True):
                    fd = open_local(run.path, (name, entry.object_name(file_name)), run.url)
            except FileNotFoundError:
                return f"{where} is missing"
            try:
                verify_fd(fd, entry, where)
                if file_name == metadata_name:  # unpicklable only as DCP's metadata types, or damaged
                    _parse_metadata(os.pread(fd, entry.size, 0), where)
            finally:
                os.close(fd)
    except CheckpointCorrupt as exc:
        return str(exc)
    return None


def load_sharded(
    run: RunCheckpoints,
    state_dict: dict[str, Any],
    *,
    step: int | None = None,
    epoch: int | None = None,
) -> CheckpointRef | None:
    """Load the latest valid sharded checkpoint (or exactly ``step``/``epoch``) into ``state_dict`` in place
    (DCP: its DTensors and tensors are filled, resharded to this world), on every rank; the checkpoint
    loaded, or None when there is none (``state_dict`` untouched)."""
    from torch.distributed.checkpoint.state_dict_loader import load

    pinned = step is not None or epoch is not None
    run._sharded_wait()
    rank = _rank()
    own: BaseException | None = None
    choice: _Candidate | _Failed | None = None
    if rank == 0:
        try:
            run.flush()
            choice = _candidate(run, step, epoch)
        except Exception as exc:
            own, choice = exc, _failed(exc)
    candidate = _broadcast(choice)
    while True:
        _raise_agreed(candidate, own)
        if candidate is None:
            return None
        assert isinstance(candidate, _Candidate)
        try:
            _check_kind(candidate)
        except UsageError as exc:
            raise exc from None  # every rank holds the same candidate: every rank raises this
        problems = [problem for problem in _all_gather(_verify_share(run, candidate)) if problem is not None]
        if not problems:
            break
        if pinned:
            raise CheckpointCorrupt(problems[0])
        choice = None
        if rank == 0:
            try:
                choice = _older(run, candidate.ref)
            except Exception as exc:
                own, choice = exc, _failed(exc)
            fallback = choice.ref.url if isinstance(choice, _Candidate) else "no checkpoint"
            logger.warning("sharded checkpoint %s is damaged (%s); all %d ranks fall back to %s",
                           candidate.ref.url, problems[0], _world(), fallback)
        candidate = _broadcast(choice)
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with warnings.catch_warnings():  # DCP warns that one process without a group loads alone
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            reader = _reader(run, candidate)
            load(state_dict, storage_reader=reader, planner=_planner(), no_dist=not _active())
    except GrdError:
        raise
    except (Exception, CheckpointException) as exc:  # DCP raises on every rank when any rank fails
        failures = exc.failures if isinstance(exc, CheckpointException) else {}
        for failed_rank, (failure, _) in sorted(failures.items()):
            if isinstance(failure, CheckpointCorrupt):  # bytes changed since the shared verification
                raise CheckpointCorrupt(f"rank {failed_rank}: {failure}") from exc
        raise CheckpointError(
            f"{candidate.ref.url} verified but DCP could not load it into this state dict ({exc}); the state "
            "dict must name the same keys as the saved one (build it the same way, e.g. get_state_dict)"
        ) from exc
    return candidate.ref
