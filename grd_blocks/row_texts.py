"""The JSON texts of a run's command rows, kept compressed: what a long phase holds per command.

Invariant: ``add(text)`` returns a number, and ``text(number)`` gives back exactly those bytes for as long as
the store lives; numbers count up from 0 in the order texts were added; the store only grows. Texts are
kept in blocks of ``BLOCK``: the newest block as the texts themselves, every full one as one zlib stream of
its texts (the rows of one run are alike, so a block costs a small share of its texts: some 40 bytes per
short command's row against some 600 as a bytes object of its own, and no object per row on the heap for
the allocator to fragment). Reading a row of a full block decompresses that block (the last few read are
kept). Thread-safe.
"""

from __future__ import annotations

import threading
import zlib
from array import array
from collections import OrderedDict
from typing import IO, Any

from grd_blocks.checkpoint.payload.serialization import JsonText

__all__ = ["BLOCK", "RowTexts", "StoredText"]

BLOCK = 64
_CACHED_BLOCKS = 4  # decompressed blocks kept for the next reads (a report reads rows in order)


class RowTexts:
    """An append-only store of texts (bytes), numbered from 0."""

    __slots__ = ("_blocks", "_cache", "_lengths", "_lock", "_open")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._blocks: list[bytes] = []  # full blocks, each one zlib stream of its texts
        self._open: list[bytes] = []  # the texts of the block being filled
        self._lengths = array("I")  # every text's length, by number
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._lengths)

    def add(self, text: bytes) -> int:
        """Keep ``text``; its number."""
        with self._lock:
            number = len(self._lengths)
            self._lengths.append(len(text))
            self._open.append(text)
            if len(self._open) == BLOCK:
                self._blocks.append(zlib.compress(b"".join(self._open), 1))
                self._open = []
            return number

    def length(self, number: int) -> int:
        """The length of text ``number`` (without reading it)."""
        return self._lengths[number]

    def text(self, number: int) -> bytes:
        """The bytes added as ``number``."""
        block, index = divmod(number, BLOCK)
        with self._lock:
            if not 0 <= number < len(self._lengths):
                raise IndexError(f"no row text {number} (the store holds {len(self._lengths)})")
            if block == len(self._blocks):
                return self._open[index]
            data = self._cache.get(block)
            if data is None:
                data = zlib.decompress(self._blocks[block])
                self._cache[block] = data
                if len(self._cache) > _CACHED_BLOCKS:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(block)
            first = block * BLOCK
            start = sum(self._lengths[first:number])
            return data[start:start + self._lengths[number]]


class StoredText(JsonText):
    """Text ``number`` of ``store`` as a ``JsonText`` (the store holds only bytes a ``JsonText`` encoded): its
    size is known without reading it, and its bytes are read when it is written into a payload."""

    __slots__ = ("_number", "_store")

    def __init__(self, store: RowTexts, number: int) -> None:  # not JsonText's: there is no value to encode
        self._store, self._number = store, number
        self._pieces, self._members, self.size = (), None, store.length(number)

    def write_to(self, out: IO[bytes] | Any) -> None:
        out.write(self._store.text(self._number))
