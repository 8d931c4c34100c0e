"""The manifest: the one file whose presence (and agreement with the payload) makes a checkpoint exist.

Invariant: a manifest is written after every payload file it lists; it records each file's size and digests,
so a reader can tell a committed checkpoint from a torn, truncated or tampered one. Manifests and LATEST.json
carry a ``checksum`` (sha256 of their own canonical JSON), so one flipped bit anywhere in them is detected
too. ``parse_manifest`` and ``parse_latest`` never trust their input: anything malformed raises
``CheckpointCorrupt`` naming the path.

Two formats of file entries are read; one is written:

* format 2 (written since #31): ``{"size", "digest", "hash", "chunk_size", "chunks"}``. ``digest`` names the
  algorithm (hashes.py: ``"sha256"`` or ``"blake3"``), ``chunks`` lists that digest of each ``chunk_size``
  piece of the file (the last may be shorter; none for an empty file) and ``hash`` is the whole file's
  value, derived from the chunks: the same digest over the chunk digests' raw bytes, in order
  (``hashes.combine``). Every byte is hashed once, as its piece is written; a reader checks every chunk
  (in parallel) and that ``hash`` agrees with them.
* format 1 (grd before #31): ``{"size", "sha256"}`` plus, for files larger than one chunk, ``chunk_size`` and
  ``chunks`` (sha256 of each piece); ``sha256`` is the whole file's (``sha256sum`` agrees). An entry without
  ``digest`` is read this way, in a manifest of either format, and verified exactly as before.

Compatibility rule: a grd reads every manifest format an earlier grd wrote (``READ_VERSIONS``) and writes only
``FORMAT_VERSION``; LATEST.json did not change and stays at format 1. A manifest or pointer of a format this
grd does not know (a newer grd wrote it) raises ``CheckpointTooNew``, never ``CheckpointCorrupt``: it is not
damage, so no reader skips it for an older checkpoint. Every manifest records the grd that wrote it
(``grd_version``, since format 2), so that message names the version to upgrade to. (A grd from before
format 2 takes a format-2 manifest for damage, "has format_version 2; this grd reads version 1", and falls
back to an older format-1 checkpoint where the run has one: docs/design.md.)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from grd_blocks.checkpoint.payload.hashes import ALGORITHMS
from grd_blocks.errors import CheckpointCorrupt, CheckpointTooNew

Unit = Literal["epoch", "step"]
"""What a checkpoint's index counts."""
UNITS: Final[tuple[Unit, ...]] = ("epoch", "step")

FORMAT_VERSION = 2
"""The format of the manifests this grd writes."""
READ_VERSIONS: Final[tuple[int, ...]] = (1, 2)
"""Manifest formats this grd reads."""
POINTER_VERSION = 1
"""The format of LATEST.json (the same since format 1)."""


def _installed_version() -> str:
    try:
        return importlib.metadata.version("grd")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


GRD_VERSION: Final = _installed_version()
"""This grd's version, recorded in every manifest it writes (``Manifest.grd_version``)."""
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_VERSION: Final = re.compile(r"[0-9A-Za-z.+!-]{1,40}")
"""A ``grd_version`` worth quoting in a message (a version string, never arbitrary text from the store)."""


@dataclass(frozen=True)
class FileEntry:
    """One payload file: its size in bytes and its digests (module docstring: the two formats).

    ``digest`` None is a format-1 entry: ``whole`` is the file's sha256, ``chunks`` (files larger than one
    chunk) the sha256 of each ``chunk_size`` piece. Otherwise ``digest`` names the algorithm of ``chunks``
    (always listed) and ``whole`` is ``hashes.combine(digest, chunks)``.
    ``stored_as`` names the object that holds the bytes when it is not the file's own name: an object store's
    re-save of the same step writes its payload beside the version it replaces (commit.py), so the old
    manifest stays whole until the new one replaces it in one PUT.
    """

    size: int
    whole: str
    chunk_size: int | None = None
    chunks: tuple[str, ...] = ()
    stored_as: str | None = None
    digest: str | None = None

    @property
    def algorithm(self) -> str:
        """The algorithm of every digest in this entry (``sha256`` for format-1 entries)."""
        return self.digest or "sha256"

    def object_name(self, file_name: str) -> str:
        """The name of the object (under the checkpoint directory) that holds ``file_name``'s bytes."""
        return self.stored_as or file_name

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"size": self.size}
        if self.digest is None:
            out["sha256"] = self.whole
        else:
            out["digest"], out["hash"] = self.digest, self.whole
        if self.chunks or self.digest is not None:
            out["chunk_size"] = self.chunk_size
            out["chunks"] = list(self.chunks)
        if self.stored_as is not None:
            out["stored_as"] = self.stored_as
        return out


@dataclass(frozen=True)
class Manifest:
    """Everything known about one committed checkpoint (the content of ``MANIFEST.json``)."""

    unit: Unit
    index: int
    files: dict[str, FileEntry]
    payload_format: str  # "torch" | "json"
    handlers: dict[str, str]  # state key -> handler type string
    created_at: str
    writer: str
    metrics: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    step: int | None = None
    epoch: int | None = None
    format_version: int = FORMAT_VERSION
    grd_version: str | None = None  # the grd that wrote it (None: written before format 2 recorded it)

    @property
    def size_bytes(self) -> int:
        return sum(entry.size for entry in self.files.values())

    def to_bytes(self) -> bytes:
        obj = asdict(self)
        obj["files"] = {name: entry.to_json() for name, entry in self.files.items()}
        return _dump(obj)


@dataclass(frozen=True)
class LatestPointer:
    """The content of ``LATEST.json``: which checkpoint directory is the newest committed one."""

    unit: Unit
    index: int
    dirname: str
    created_at: str
    writer: str
    format_version: int = POINTER_VERSION

    def to_bytes(self) -> bytes:
        return _dump(asdict(self))


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps({**obj, "checksum": sha256_hex(_canonical(obj))}, indent=1, sort_keys=True).encode()


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def writer_id() -> str:
    """``host:pid:attempt`` of this process (attempt from ``GRD_ATTEMPT``, else 1)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.environ.get('GRD_ATTEMPT', '1')}"


def _load_object(data: bytes, path: str, what: str, versions: tuple[int, ...]) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointCorrupt(
            f"{what} {path} is not valid JSON ({exc}); it was damaged or not ours"
        ) from None
    except RecursionError:  # '[[[[...': nesting deeper than the parser's stack, a few kB are enough
        raise CheckpointCorrupt(
            f"{what} {path} nests JSON deeper than any {what} does; it was damaged or not ours"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointCorrupt(f"{what} {path} is not a JSON object")
    checksum = obj.pop("checksum", None)
    if checksum != sha256_hex(_canonical(obj)):
        raise CheckpointCorrupt(f"{what} {path} fails its checksum; it was damaged or edited by hand")
    version = obj.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > max(versions):
        writer = obj.get("grd_version")
        writer = writer if isinstance(writer, str) and _VERSION.fullmatch(writer) else None
        raise CheckpointTooNew(what, path, version, versions, GRD_VERSION, writer)
    if version not in versions or isinstance(version, bool):
        readable = " and ".join(str(known) for known in versions)
        raise CheckpointCorrupt(
            f"{what} {path} has format_version {version!r}; this grd reads version {readable} "
            "(a newer grd wrote it: upgrade grd to read it)"
        )
    return obj


def _require(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], path: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise CheckpointCorrupt(f"{path}: field {key!r} is missing or has the wrong type ({value!r})")
    return value


def _unit(obj: dict[str, Any], path: str) -> Unit:
    unit = obj.get("unit")
    for known in UNITS:
        if unit == known:
            return known
    raise CheckpointCorrupt(f"{path}: unit {unit!r} is not one of {UNITS}")


def _chunks(entry: dict[str, Any], size: int, where: str) -> tuple[int | None, tuple[str, ...]]:
    if "chunks" not in entry and "chunk_size" not in entry and "digest" not in entry:
        return None, ()
    chunk_size, chunks = entry.get("chunk_size"), entry.get("chunks")
    if (
        not isinstance(chunk_size, int)
        or isinstance(chunk_size, bool)
        or chunk_size <= 0
        or not isinstance(chunks, list)
        or len(chunks) != -(-size // chunk_size)
        or not all(isinstance(digest, str) and _HEX64.fullmatch(digest) for digest in chunks)
    ):
        raise CheckpointCorrupt(f"{where} has malformed chunk_size/chunks")
    return chunk_size, tuple(chunks)


def _algorithm(entry: dict[str, Any], where: str) -> str | None:
    """The entry's ``digest`` (None: a format-1 entry); ``CheckpointCorrupt`` for a name grd does not know."""
    if "digest" not in entry:
        return None
    algorithm = entry["digest"]
    if algorithm not in ALGORITHMS:
        raise CheckpointCorrupt(
            f"{where} names digest {str(algorithm)[:40]!r}, not one of {', '.join(ALGORITHMS)}; it was "
            "damaged or written by a newer grd"
        )
    return str(algorithm)


_OBJECT_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.~-]{0,199}")


def _stored_as(entry: dict[str, Any], where: str) -> str | None:
    stored_as = entry.get("stored_as")
    if stored_as is None:
        return None
    if not isinstance(stored_as, str) or not _OBJECT_RE.fullmatch(stored_as) or stored_as == "MANIFEST.json":
        raise CheckpointCorrupt(f"{where} has a malformed stored_as {stored_as!r}")
    return stored_as


def parse_manifest(data: bytes, path: str) -> Manifest:
    """Parse and validate ``MANIFEST.json`` content read from ``path``."""
    obj = _load_object(data, path, "manifest", READ_VERSIONS)
    raw_files = _require(obj, "files", dict, path)
    files: dict[str, FileEntry] = {}
    for name, entry in raw_files.items():
        if not isinstance(entry, dict) or "/" in name or name in ("", ".", ".."):
            raise CheckpointCorrupt(f"{path}: file entry {name!r} is malformed")
        where = f"{path}: file entry {name!r}"
        size, algorithm = entry.get("size"), _algorithm(entry, where)
        whole = entry.get("sha256" if algorithm is None else "hash")
        if not isinstance(size, int) or size < 0 or not isinstance(whole, str) or not _HEX64.fullmatch(whole):
            raise CheckpointCorrupt(f"{where} has no valid size/{'sha256' if algorithm is None else 'hash'}")
        chunk_size, chunks = _chunks(entry, size, where)
        files[name] = FileEntry(size, whole, chunk_size, chunks, _stored_as(entry, where), algorithm)
    if not files:
        raise CheckpointCorrupt(f"{path}: lists no payload files")
    step, epoch = obj.get("step"), obj.get("epoch")
    return Manifest(
        unit=_unit(obj, path),
        index=_require(obj, "index", int, path),
        files=files,
        payload_format=_require(obj, "payload_format", str, path),
        handlers=_require(obj, "handlers", dict, path),
        created_at=_require(obj, "created_at", str, path),
        writer=_require(obj, "writer", str, path),
        metrics=_require(obj, "metrics", dict, path),
        metadata=_require(obj, "metadata", dict, path),
        step=step if isinstance(step, int) else None,
        epoch=epoch if isinstance(epoch, int) else None,
        grd_version=version if isinstance(version := obj.get("grd_version"), str) else None,
    )


def parse_latest(data: bytes, path: str) -> LatestPointer:
    """Parse and validate ``LATEST.json`` content read from ``path``."""
    obj = _load_object(data, path, "latest pointer", (POINTER_VERSION,))
    pointer = LatestPointer(
        unit=_unit(obj, path),
        index=_require(obj, "index", int, path),
        dirname=_require(obj, "dirname", str, path),
        created_at=_require(obj, "created_at", str, path),
        writer=_require(obj, "writer", str, path),
    )
    if pointer.index < 0 or pointer.dirname != f"{pointer.unit}_{pointer.index}":
        # e.g. '../../other/run/step_2': never followed out of the run's folder, whatever the store
        raise CheckpointCorrupt(f"latest pointer {path} names {pointer.dirname[:80]!r}, not the checkpoint "
                                f"{pointer.unit}_{pointer.index} of its own run; it was damaged or not ours")
    return pointer
