"""Shared fixtures: each lives in tests/fixtures/ and is registered here."""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

pytest_plugins = ["tests.fixtures.prefect_api", "tests.fixtures.prefect_server", "tests.fixtures.s3_server"]
