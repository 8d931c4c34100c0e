"""A value encoded once as ``JsonText`` is saved exactly as the value itself would be: the same JSON file, the
same value loaded back, through a real local store; it is refused unless JSON gives it back equal; beside
non-JSON state it goes the torch way as the value it encodes."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from grd_blocks.checkpoint import CheckpointEngine
from grd_blocks.checkpoint.payload.serialization import (
    JSON_FILE,
    JsonText,
    PieceStream,
    deserialize,
    serialize,
)

ROWS: dict[str, Any] = {
    f"p.c{i}": {"phase": "p", "row": {"name": f"c{i}", "status": "COMPLETED", "returncode": 0, "x": None,
                                      "elapsed_s": 0.001 * i, "stdout_tail": f"line \"{i}\"\n\u00e9"}}
    for i in range(50)
}


def test_a_snapshot_joined_from_encoded_rows_is_byte_identical_to_encoding_the_rows_whole() -> None:
    joined = {"format": "f/1", "rows": JsonText.joined({key: JsonText(row) for key, row in ROWS.items()})}
    whole = {"format": "f/1", "rows": ROWS}
    assert serialize(joined) == serialize(whole)
    files, payload_format = serialize(joined)
    assert payload_format == "json"
    assert json.loads(files[JSON_FILE]) == whole


def test_encoded_rows_saved_through_a_store_load_back_as_plain_values(tmp_path: Path) -> None:
    run = CheckpointEngine(str(tmp_path / "ckpt")).run("r")
    run.save({"rows": JsonText.joined({key: JsonText(row) for key, row in ROWS.items()})}, step=1)
    assert run.load() == {"rows": ROWS}
    [stored] = list((tmp_path / "ckpt").rglob(JSON_FILE))
    assert json.loads(stored.read_text()) == {"rows": ROWS}


@pytest.mark.parametrize("value", [{"pair": (1, 2)}, {1: "key"}, {"nan": float("nan")}, {"obj": object()}])
def test_a_value_json_would_not_give_back_equal_is_refused_when_encoded(value: Any) -> None:
    with pytest.raises(ValueError, match="not JSON data"):
        JsonText(value)


def test_encoded_text_beside_state_json_cannot_hold_is_saved_as_the_value_it_encodes() -> None:
    state = {"rows": JsonText({"a": [1, 2]}), "pair": (1, 2)}
    files, payload_format = serialize(state)
    assert payload_format == "torch"
    loaded = deserialize({name: bytes(data) for name, data in files.items()}, payload_format, where="mem://t")
    assert loaded == {"rows": {"a": [1, 2]}, "pair": (1, 2)}


def test_a_snapshot_of_joined_rows_allocates_one_copy_of_its_size_when_serialized() -> None:
    rows = {f"p.c{i}": JsonText({**ROWS["p.c1"], "row": {**ROWS["p.c1"]["row"], "name": f"c{i}"}})
            for i in range(20_000)}
    tracemalloc.start()
    try:
        files, _ = serialize({"format": "f/1", "rows": JsonText.joined(rows)})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = len(files[JSON_FILE])
    assert json.loads(files[JSON_FILE])["rows"]["p.c19999"]["row"]["name"] == "c19999"
    assert peak < 2 * size, (peak, size)  # one copy, its keys and piece list (three copies before: 3.0x)


def test_a_large_joined_payload_streams_the_bytes_of_encoding_it_whole_a_window_at_a_time() -> None:
    rows = {f"p.c{i}": JsonText({**ROWS["p.c1"], "row": {**ROWS["p.c1"]["row"], "name": f"c{i}"}})
            for i in range(3_000)}
    whole, _ = serialize({"format": "f/1", "rows": {key: text.value() for key, text in rows.items()}})
    files, payload_format = serialize({"format": "f/1", "rows": JsonText.joined(rows)}, stream=True,
                                      window=2, piece_size=2**16)
    stream = files[JSON_FILE]
    assert payload_format == "json" and isinstance(stream, PieceStream)
    received = bytearray()
    for number, piece in enumerate(stream):
        received += bytes(piece)
        stream.release(number)  # the two readers a commit has: the store and the digest
        stream.release(number)
    assert bytes(received) == whole[JSON_FILE] and len(received) > 4 * 2**16  # several windows' worth
