"""Shared fixtures (each lives in tests/fixtures/ and is registered here) and the suite's markers and groups.

Markers are derived from what a test asks for, so a subset is selectable without remembering which file
needs what: ``server`` (a real Prefect API or server, or SeaweedFS), ``s3`` (SeaweedFS), ``e2e`` (the
dedicated ``prefect server`` with workers; set per module). ``torch_procs`` and ``pristine_process`` are set
where the test is written.

Under pytest-xdist (``--dist loadgroup``) the end-to-end tests of one database backend run on one worker, so
each backend's server (and the PostgreSQL cluster) is started once per run, and the tests that stop or
restart a shared server never do it under another test's feet. Every other test may run on any worker; each
worker starts its own Prefect API and SeaweedFS on first use, and has its own ``GRD_RUNTIME_DIR``.
"""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# grd allows one copy of a command per key per machine (process/exclusive.py), and tests on other workers
# reuse run keys such as "t1": each pytest process, and every grd, worker and flow run it starts, has its own
# locks.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")
os.environ["GRD_RUNTIME_DIR"] = tempfile.mkdtemp(prefix=f"grd-runtime-{WORKER}-")

pytest_plugins = ["tests.fixtures.prefect_api", "tests.fixtures.prefect_server", "tests.fixtures.s3_server",
                  "tests.fixtures.dask_cluster", "tests.fixtures.ray_cluster"]

S3_FIXTURES = frozenset({"s3_server", "s3_bucket"})
DASK_FIXTURES = frozenset({"dask_cluster", "own_dask_cluster", "ray_cluster"})
PREFECT_FIXTURES = frozenset({"prefect_api", "api_url", "prefect_servers", "prefect_server", "deployed",
                              "deployed_on"})
DEDICATED_SERVER_FIXTURES = frozenset({"prefect_servers", "prefect_server", "deployed", "deployed_on"})


def _backend(item: pytest.Item, fixtures: set[str]) -> str | None:
    """The database backend of the dedicated Prefect server ``item`` uses, if it uses one."""
    if not fixtures & DEDICATED_SERVER_FIXTURES:
        return None
    callspec = getattr(item, "callspec", None)
    param = callspec.params.get("deployed_on") if callspec is not None else None
    return str(param) if param is not None else "sqlite"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the servers it asks for and pin the dedicated-server tests to one group per backend
    (before ``-m`` deselects and before xdist reads the groups)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & (S3_FIXTURES | PREFECT_FIXTURES | DASK_FIXTURES):
            item.add_marker(pytest.mark.server)
        if fixtures & S3_FIXTURES:
            item.add_marker(pytest.mark.s3)
        if "ray_cluster" in fixtures:  # one worker holds the session's Ray cluster: it starts once per run
            item.add_marker(pytest.mark.xdist_group("ray-cluster"))
        backend = _backend(item, fixtures)
        if backend is not None:
            item.add_marker(pytest.mark.xdist_group(f"prefect-server-{backend}"))
