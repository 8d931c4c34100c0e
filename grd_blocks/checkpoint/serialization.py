"""Payload (de)serialization: plain state -> one ``state.pt`` (torch zip) or ``state.json``, and back.

Invariant: loading never unpickles arbitrary objects. ``state.pt`` is read only with
``torch.load(weights_only=True)``; a file that needs anything outside that set raises ``UnsafeCheckpoint``
and nothing from it is used. A state that round-trips through JSON exactly (no tensors, no tuples, string
keys only) is stored as JSON, readable with any tool, and saving or loading it never imports torch.

Bytes reach ``deserialize`` only after their size and sha256 matched the manifest (reader.py). On local disk a
torch payload arrives as a ``VerifiedFile``: the descriptor the sha256 was computed through, which
``torch.load(mmap=True)`` maps (tensors are paged in from the verified file, not copied). grd never rewrites a
committed file in place (a retry renames a new directory in), so the mapping keeps showing the bytes that
were verified, even after the checkpoint is replaced or deleted.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from grd_blocks.errors import CheckpointCorrupt, UnsafeCheckpoint

TORCH_FILE = "state.pt"
JSON_FILE = "state.json"

Blob = bytes | memoryview
"""Serialized file content (a ``memoryview`` avoids copying torch's in-memory buffer)."""


@dataclass(frozen=True)
class VerifiedFile:
    """A local payload file whose size and sha256 were verified through the open descriptor ``fd``."""

    fd: int
    path: str  # the committed path, for messages

    @property
    def open_path(self) -> str:
        """A path to the same inode as ``fd`` (``/proc/self/fd/N`` on Linux), immune to later renames."""
        proc = f"/proc/self/fd/{self.fd}"
        return proc if os.path.exists(proc) else self.path

    def read(self) -> bytes:
        """The whole file, read through ``fd``."""
        size = os.fstat(self.fd).st_size
        parts, offset = [], 0
        while offset < size:
            part = os.pread(self.fd, size - offset, offset)
            if not part:
                break
            parts.append(part)
            offset += len(part)
        return b"".join(parts)


def _json_exact(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str | int | bool | type(None)):
        return True
    if isinstance(value, dict):
        return all(isinstance(key, str) and _json_exact(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_json_exact(item) for item in value)
    return False


def serialize(payload: dict[str, Any]) -> tuple[dict[str, Blob], str]:
    """Return ``({file name: content}, payload_format)`` for the plain ``payload``."""
    if _json_exact(payload):
        return {JSON_FILE: json.dumps(payload, sort_keys=True).encode()}, "json"
    import torch  # a state that is not JSON holds tensors (torch is loaded) or tuples/int keys

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return {TORCH_FILE: buffer.getbuffer()}, "torch"


def _torch_load(source: Blob | VerifiedFile, map_location: Any) -> Any:
    import torch

    if not isinstance(source, VerifiedFile):
        return torch.load(io.BytesIO(source), map_location=map_location, weights_only=True)
    try:
        return torch.load(source.open_path, map_location=map_location, weights_only=True, mmap=True)
    except OSError:  # a filesystem that cannot be memory-mapped: read the same descriptor instead
        return torch.load(io.BytesIO(source.read()), map_location=map_location, weights_only=True)


def deserialize(
    files: Mapping[str, Blob | VerifiedFile], payload_format: str, *, where: str, map_location: Any = "cpu"
) -> Any:
    """Read back what ``serialize`` wrote; ``where`` (the checkpoint URL) names it in errors."""
    if payload_format == "json":
        try:
            data = files[JSON_FILE]
            return json.loads(bytes(data.read() if isinstance(data, VerifiedFile) else data))
        except (KeyError, ValueError) as exc:
            raise CheckpointCorrupt(f"{where}: {JSON_FILE} is missing or not JSON ({exc})") from None
    if payload_format != "torch":
        raise CheckpointCorrupt(f"{where}: payload_format {payload_format!r} is not 'torch' or 'json'")
    if TORCH_FILE not in files:
        raise CheckpointCorrupt(f"{where}: manifest says torch payload but {TORCH_FILE} is not listed")
    try:
        return _torch_load(files[TORCH_FILE], map_location)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeCheckpoint(
            f"{where}/{TORCH_FILE} refers to objects outside torch's weights-only set ({first_line}); "
            "grd never unpickles arbitrary objects. Save state_dicts, tensors and plain values instead"
        ) from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointCorrupt(f"{where}/{TORCH_FILE} cannot be read by torch.load ({exc})") from None
