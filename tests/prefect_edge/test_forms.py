"""The run forms of grd's deployments: every parameter titled and described, optional ones plain inputs."""

from __future__ import annotations

from typing import Any

import pytest
from prefect.utilities.callables import parameter_schema

from flows.benchmark import benchmark
from flows.train import train
from grd_blocks.prefect_edge.forms import unset_if_blank


def _properties(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = [(name, prop) for name, prop in schema["properties"].items()]
    for definition, model in schema.get("definitions", {}).items():
        found += [(f"{definition}.{name}", prop) for name, prop in model.get("properties", {}).items()]
    return found


@pytest.mark.parametrize("flow", [benchmark, train], ids=["benchmark", "train"])
def test_every_parameter_has_a_title_a_description_and_no_null_type_toggle(flow: Any) -> None:
    schema = parameter_schema(flow).model_dump()
    for name, prop in _properties(schema):
        assert prop.get("title") and prop["title"] != name.rsplit(".", 1)[-1], (name, prop)
        assert len(prop.get("description") or "") > 10, (name, prop)
        assert {"type": "null"} not in prop.get("anyOf", []), (name, prop)


def test_an_empty_text_input_means_not_set() -> None:
    assert [unset_if_blank(v) for v in (None, "", "  ", "nightly-s3")] == [None, None, None, "nightly-s3"]
