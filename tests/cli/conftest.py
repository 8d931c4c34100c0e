"""Fixtures of the `grd` command-line tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def api_url(prefect_api: None) -> Iterator[str]:
    """The URL of the session's real Prefect API, for `grd` subprocesses (PREFECT_API_URL set)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the prefect_api fixture did not expose an API URL"
    yield str(url)
