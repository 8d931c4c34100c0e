"""`grd run` with ``PREFECT_API_URL`` set starts no server and imports none of Prefect's server code (its
import alone cost each attempt ~1.5 s; bench/bench_attempt_cost.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import sys
    from grd_blocks.prefect_edge.ephemeral import guarded_ephemeral_api
    with guarded_ephemeral_api() as url:
        print(url, sorted(name for name in sys.modules if name.startswith("prefect.server.api")))
    """)


def test_a_set_api_url_starts_no_server_and_imports_none_of_its_code() -> None:
    env = dict(os.environ, PREFECT_API_URL="http://127.0.0.1:9/api", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "None []", done.stdout + done.stderr
