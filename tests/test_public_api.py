"""The public API is exactly ``grd_blocks.__all__``: every name resolves, and nothing public is left out."""

from __future__ import annotations

import importlib
import subprocess
import sys

import grd_blocks


def test_every_name_in_all_resolves() -> None:
    for name in grd_blocks.__all__:
        assert getattr(grd_blocks, name) is not None, name


def test_all_is_unique() -> None:
    assert len(grd_blocks.__all__) == len(set(grd_blocks.__all__))


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


def test_every_public_grd_object_on_the_package_is_in_all() -> None:
    for name in dir(grd_blocks):
        value = getattr(grd_blocks, name)
        if name.startswith("_") or isinstance(value, type(grd_blocks)):
            continue
        if getattr(value, "__module__", "").startswith("grd_blocks"):
            assert name in grd_blocks.__all__, name


def test_importing_the_package_imports_nothing_heavy() -> None:
    code = (
        "import sys, grd_blocks; "
        "heavy = sorted(m for m in ('torch', 'prefect', 'fsspec', 'numpy') if m in sys.modules); "
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_public_names_resolve_to_the_documented_modules() -> None:
    assert grd_blocks.Budget.__module__.startswith("grd_blocks.budget")
    assert grd_blocks.CheckpointStore.__module__.startswith("grd_blocks.prefect_edge")
    assert grd_blocks.run_command.__module__.startswith("grd_blocks.process")


def test_all_lists_exactly_the_errors_and_the_lazy_names() -> None:
    lazy = set(vars(grd_blocks)["_LAZY"])
    errors = {name for name in grd_blocks.__all__ if name not in lazy}
    assert all(issubclass(getattr(grd_blocks, name), grd_blocks.GrdError) for name in errors)
