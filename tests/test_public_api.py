"""The public API is exactly ``grd_blocks.__all__``: every name resolves, and nothing public is left out."""

from __future__ import annotations

import importlib

import grd_blocks


def test_every_name_in_all_resolves() -> None:
    for name in grd_blocks.__all__:
        assert getattr(grd_blocks, name) is not None, name


def test_all_is_sorted_and_unique() -> None:
    assert list(grd_blocks.__all__) == sorted(set(grd_blocks.__all__))


def test_every_error_class_is_exported_and_rooted_at_grd_error() -> None:
    errors = importlib.import_module("grd_blocks.errors")
    classes = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, Exception) and value.__module__ == errors.__name__
    }
    assert classes <= set(grd_blocks.__all__)
    for name in classes:
        assert issubclass(getattr(errors, name), grd_blocks.GrdError)


def test_no_public_module_attribute_is_missing_from_all() -> None:
    public = {
        name
        for name, value in vars(grd_blocks).items()
        if not name.startswith("_") and not isinstance(value, type(grd_blocks))
        and name not in {"annotations"}
    }
    assert public == set(grd_blocks.__all__)
