"""E2E fixtures: the dedicated Prefect server (tests/fixtures/prefect_server.py) with grd's deployments."""

from __future__ import annotations

import pytest

from tests.fixtures.prefect_server import PrefectServer, prefect_server

__all__ = ["deployed", "prefect_server"]


@pytest.fixture(scope="session")
def deployed(prefect_server: PrefectServer) -> PrefectServer:
    """`prefect deploy --all` from the repository's prefect.yaml, plus the test-only approval probe."""
    prefect_server.prefect("--no-prompt", "deploy", "--all")
    prefect_server.prefect("--no-prompt", "deploy", "--prefect-file", "tests/e2e/prefect-e2e.yaml", "--all")
    return prefect_server
