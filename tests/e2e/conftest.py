"""E2E fixtures: the dedicated Prefect servers (tests/fixtures/prefect_server.py) with grd's deployments.

``deployed`` is the SQLite server; ``deployed_on`` runs a test once per backend (SQLite, then PostgreSQL, as
production runs it), each backend's server shared by the whole session.
"""

from __future__ import annotations

import pytest

from tests.fixtures.prefect_server import BACKENDS, PrefectServer, PrefectServers

__all__ = ["deployed", "deployed_on"]


def _deploy(server: PrefectServer) -> PrefectServer:
    """`prefect deploy --all` from the repository's prefect.yaml, plus the test-only deployments (once)."""
    if not server.deployed:
        server.prefect("--no-prompt", "deploy", "--all")
        server.prefect("--no-prompt", "deploy", "--prefect-file", "tests/e2e/prefect-e2e.yaml", "--all")
        server.deployed = True
    return server


@pytest.fixture(scope="session")
def deployed(prefect_servers: PrefectServers) -> PrefectServer:
    """The SQLite server with every deployment."""
    return _deploy(prefect_servers.get("sqlite"))


@pytest.fixture(scope="session", params=BACKENDS)
def deployed_on(request: pytest.FixtureRequest, prefect_servers: PrefectServers) -> PrefectServer:
    """The server of each backend in turn (SQLite, PostgreSQL) with every deployment."""
    return _deploy(prefect_servers.get(str(request.param)))
