"""Plain state is stored as JSON exactly when JSON gives it back equal; anything else keeps its types through
the torch format, and what a checkpoint cannot hold is refused with the path to the offending value."""

from __future__ import annotations

import math
from typing import Any

import pytest

from grd_blocks.checkpoint.payload.handlers import check_plain
from grd_blocks.checkpoint.payload.serialization import (
    JSON_FILE,
    TORCH_FILE,
    deserialize,
    json_text,
    serialize,
)
from grd_blocks.errors import UsageError


def _round_trip(state: dict[str, Any]) -> tuple[str, Any]:
    files, payload_format = serialize(state)
    blobs = {name: bytes(data) for name, data in files.items()}
    return payload_format, deserialize(blobs, payload_format, where="mem://test")


def test_json_data_is_stored_as_json_and_reads_back_equal() -> None:
    state = {"rows": {"p.c1": {"status": "COMPLETED", "returncode": 0, "elapsed_s": 0.001, "tail": None}},
             "flags": [True, False], "big": 2**70, "neg_zero": -0.0, "tiny": 0.1 + 0.2}
    files, payload_format = serialize(state)
    assert payload_format == "json" and set(files) == {JSON_FILE}
    assert _round_trip(state) == ("json", state)


@pytest.mark.parametrize(
    "state",
    [
        {"pair": (1, 2)},  # a tuple JSON would turn into a list
        {"by_epoch": {1: 0.5}},  # an int key JSON would turn into "1"
        {"loss": math.inf},  # JSON has no infinity
        {"flag_key": {True: "x"}},  # a bool key JSON would turn into "true"
    ],
    ids=["tuple", "int-key", "inf", "bool-key"],
)
def test_state_json_would_change_keeps_its_types_through_the_torch_format(state: dict[str, Any]) -> None:
    assert json_text(state) is None
    payload_format, loaded = _round_trip(state)
    assert payload_format == "torch" and loaded == state
    (name, value), = state.items()
    assert type(loaded[name]) is type(value)
    if isinstance(value, dict):
        assert [type(key) for key in loaded[name]] == [type(key) for key in value]


def test_nan_is_kept_through_the_torch_format() -> None:
    files, payload_format = serialize({"loss": math.nan})
    assert payload_format == "torch" and set(files) == {TORCH_FILE}
    assert math.isnan(_round_trip({"loss": math.nan})[1]["loss"])


def test_a_value_a_checkpoint_cannot_hold_is_refused_with_its_path() -> None:
    with pytest.raises(UsageError, match=r"state 'progress'\['rows'\]\[1\] is a builtins.object"):
        check_plain({"rows": [1, object()]}, "'progress'")


def test_plain_data_with_tuples_and_int_keys_passes_the_check() -> None:
    check_plain({"pair": (1, 2), "by_epoch": {1: [0.5, None]}, "nan": math.nan}, "'metrics'")
