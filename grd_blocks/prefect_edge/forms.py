"""What grd's flow parameters look like in the Prefect UI's run form ("Run > Custom run").

Invariants: every parameter of grd's flows carries a human title (``Title``) and a description (the flow's
Google-style ``Args:`` docstring, which Prefect reads). An optional text parameter is typed
``Annotated[str | None, OptionalText, Title(...)] = ""``: its JSON schema is a plain string whose default is
the empty string, so the form shows an empty text input (not a "string or None" type toggle, and not a
null default the form's own validation refuses: "None is not of type 'string'"); an empty or blank input,
the default, and None from a Python caller all mean "not set" (``unset_if_blank``). A deployment must not
list such a parameter as ``null`` in its ``parameters``: the server checks that null against the string
schema.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, WithJsonSchema

__all__ = ["OptionalText", "Title", "unset_if_blank"]

OptionalText = WithJsonSchema({"type": "string"})


def Title(text: str) -> Any:
    """The title the run form shows for a parameter (Prefect would show the bare parameter name)."""
    return Field(json_schema_extra={"title": text})


def unset_if_blank(value: str | None) -> str | None:
    """``None`` for an empty or blank text input, the value itself otherwise."""
    return value if value is not None and value.strip() else None
