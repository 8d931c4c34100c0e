"""A flaky Prefect API is not a failed run (api_outage.py): a real server stopped and restarted mid-run, and
a 127.0.0.1 proxy (tests/fixtures/api_proxy.py) answering 503 and 429 and resetting connections, which a
real server does not do on demand, are ridden out: the run completes and its report has every row. A server
gone past Prefect's client retry window ends the run with one line naming the server and the limit, the
finished commands committed, and ``--resume`` continuing it.

What ran is counted independently of grd's report: each command appends its name to a marks file.
The outage always covers a phase boundary (a phase's end and the next one's start are the API calls a run
cannot skip): the gate command signals ``ready`` and waits for ``go``, which the test creates only once the
fault is in place.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from grd_blocks.prefect_edge.api_outage import outage_line, retry_window_s, unreachable, with_retries
from tests.fixtures.api_proxy import api_proxy
from tests.fixtures.prefect_server import (
    PrefectServer,
    free_port,
    server_env,
    stop_group,
    wait_until,
)

SPEC = """
name: flaky
timeout: 10m
phases:
  - name: p0
    commands:
      - {name: a, run: "echo a >> marks"}
      - name: gate
        run: ["sh", "-c", "echo ready > ready; while [ ! -e go ]; do sleep 0.05; done; echo gate >> marks"]
  - name: p1
    commands:
      - {name: b, run: "echo b >> marks"}
cleanup: {name: final, run: "echo final >> marks"}
"""


# --- the classification and the retry window (no server) --------------------------------------------------


def _status_error(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1:1/api/flow_runs/")
    return httpx.HTTPStatusError("x", request=request, response=httpx.Response(code, request=request))


@pytest.mark.parametrize("code", [408, 429, 502, 503, 504])
def test_answers_prefect_s_client_retries_are_an_outage(code: int) -> None:
    assert unreachable(_status_error(code))


@pytest.mark.parametrize("code", [400, 401, 403, 404, 409, 422, 500])
def test_an_answer_that_names_a_mistake_or_a_defect_is_not_an_outage(code: int) -> None:
    assert not unreachable(_status_error(code))


def test_a_transport_failure_anywhere_in_the_cause_chain_is_an_outage() -> None:
    try:
        try:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        except httpx.ConnectError as exc:
            raise RuntimeError("wrapped by an engine") from exc
    except RuntimeError as wrapped:
        assert unreachable(wrapped)
        assert "ConnectError: [Errno 111] Connection refused" in outage_line(wrapped)
    assert not unreachable(RuntimeError("a defect")) and not unreachable(None)


def test_the_retry_window_is_prefect_s_exponential_backoff_summed() -> None:
    assert [retry_window_s(n) for n in (0, 1, 2, 5, 6)] == [0, 2, 6, 62, 126]


def test_grd_s_own_calls_are_asked_again_with_growing_jittered_pauses_within_the_window() -> None:
    pauses: list[float] = []
    failures = iter([httpx.ConnectError("refused"), httpx.ReadError("reset"), _status_error(503)])

    def call() -> str:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return "published"

    assert with_retries(call, window_s=60, sleep=pauses.append) == "published"
    assert len(pauses) == 3 and all(0.8 * 2**n <= p <= 1.2 * 2**n for n, p in enumerate(pauses))


def test_grd_s_own_calls_give_up_at_the_window_and_never_retry_a_mistake() -> None:
    pauses: list[float] = []

    def refused() -> None:
        raise httpx.ConnectError("refused")

    with pytest.raises(httpx.ConnectError):
        with_retries(refused, window_s=5, sleep=pauses.append)
    assert sum(pauses) == pytest.approx(5) and len(pauses) >= 3

    def mistake() -> None:
        raise _status_error(404)

    pauses.clear()
    with pytest.raises(httpx.HTTPStatusError):
        with_retries(mistake, window_s=60, sleep=pauses.append)
    assert pauses == []


# --- a real server, stopped and restarted; a proxy for the faults it cannot make ---------------------------


class Server:
    """A real `prefect server start` (SQLite in its home) that can be stopped and started again on the same
    port and database, as an operator's restart does."""

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = server_env(home, self.port)
        self.server = PrefectServer(api_url=env["PREFECT_API_URL"], ui_url="", home=home, env=env)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = self.server.spawn([sys.executable, "-m", "prefect", "server", "start", "--host",
                                       "127.0.0.1", "--port", str(self.port)], "server.log", favoured=True)
        wait_until(self._healthy, f"prefect server on port {self.port}", 180)

    def _healthy(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.server.logs_tail()
        try:
            return httpx.get(f"{self.server.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        assert self.proc is not None
        stop_group(self.proc)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    started = Server(tmp_path / "prefect-home")
    started.start()
    try:
        yield started
    finally:
        for proc in started.server.processes:
            stop_group(proc)


def _grd(work: Path, api_url: str, *args: str, retries: int) -> subprocess.Popen[str]:
    env = server_env(work / "unused-home", 0)  # no PREFECT_* of the test harness
    env.update(PREFECT_HOME=str(work / "client-home"), PREFECT_API_URL=api_url,
               PREFECT_CLIENT_MAX_RETRIES=str(retries))
    return subprocess.Popen([sys.executable, "-m", "grd_blocks.cli", "run", "spec.yaml", "--store", "./ck",
                             *args], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, stdin=subprocess.DEVNULL)


def _work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "spec.yaml").write_text(SPEC)
    return work


def _marks(work: Path) -> list[str]:
    path = work / "marks"
    return path.read_text().split() if path.exists() else []


def _report(work: Path, run_key: str) -> dict:  # type: ignore[type-arg]
    data: dict = json.loads((work / "reports" / run_key / "report.json").read_text())  # type: ignore[type-arg]
    return data


def _rows(report: dict) -> dict[str, str]:  # type: ignore[type-arg]
    return {f"{p['name']}.{c['name']}": c["status"] for p in report["phases"] for c in p["commands"]}


def _finish(proc: subprocess.Popen[str]) -> str:
    out, _ = proc.communicate(timeout=600)
    return out


def _flow_runs(server: Server) -> dict[str, str]:
    with server.server.http() as client:
        runs = client.post("/flow_runs/filter", json={}).json()
    return {run["name"]: run["state"]["type"] for run in runs}


@pytest.mark.server
def test_a_server_restarted_at_a_phase_boundary_is_ridden_out_and_the_report_is_complete(
    tmp_path: Path, server: Server
) -> None:
    work = _work(tmp_path)
    proc = _grd(work, server.server.api_url, "--run-key", "restart-1", retries=6)
    try:
        wait_until(lambda: (work / "ready").exists() or proc.poll() is not None, "the gate command", 180,
                   interval_s=0.05)
        server.stop()  # the phase's end and the next phase's start fall in the outage
        (work / "go").touch()
        server.start()
        out = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-6000:]
    assert sorted(_marks(work)) == ["a", "b", "final", "gate"]  # each command ran once
    report = _report(work, "restart-1")
    assert report["status"] == "COMPLETED" and report["progress"]["committed"]
    assert _rows(report) == {"p0.a": "COMPLETED", "p0.gate": "COMPLETED", "p1.b": "COMPLETED"}
    runs = _flow_runs(server)
    assert runs.get("p1") == "COMPLETED"  # the phase after the outage is a subflow run the UI shows
    assert "Traceback" not in out, out[-6000:]


@pytest.mark.server
def test_503_429_and_reset_connections_at_a_phase_boundary_are_ridden_out(
    tmp_path: Path, server: Server
) -> None:
    work = _work(tmp_path)
    with api_proxy(server.server.api_url) as proxy:
        proc = _grd(work, proxy.url, "--run-key", "faults-1", retries=6)
        try:
            wait_until(lambda: (work / "ready").exists() or proc.poll() is not None, "the gate command", 180,
                       interval_s=0.05)
            for fault in ("503", "429", "reset"):
                proxy.fault(fault)
                if fault == "503":
                    (work / "go").touch()  # the phase ends while its end cannot be recorded
                proxy.wait_answered(fault, 2, timeout_s=120)  # the client met it, and asked again
            proxy.forward()
            out = _finish(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, out[-6000:]
    assert sorted(_marks(work)) == ["a", "b", "final", "gate"]
    report = _report(work, "faults-1")
    assert report["status"] == "COMPLETED"
    assert _rows(report) == {"p0.a": "COMPLETED", "p0.gate": "COMPLETED", "p1.b": "COMPLETED"}
    assert _flow_runs(server).get("p1") == "COMPLETED"


@pytest.mark.server
def test_a_server_gone_past_the_retry_window_fails_the_run_in_one_line_and_resume_continues_it(
    tmp_path: Path, server: Server
) -> None:
    work = _work(tmp_path)
    proc = _grd(work, server.server.api_url, "--run-key", "gone-1", retries=2)  # a 6 s window
    try:
        wait_until(lambda: (work / "ready").exists() or proc.poll() is not None, "the gate command", 180,
                   interval_s=0.05)
        server.stop()
        (work / "go").touch()
        out = _finish(proc)  # the server stays gone until grd has given up
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out[-6000:]
    lines = [line for line in out.splitlines() if line.startswith("grd run: ")]
    assert len(lines) == 1, out[-6000:]
    assert f"the Prefect API at {server.server.api_url} did not answer for about 6 s" in lines[0]
    assert "PREFECT_CLIENT_MAX_RETRIES=2" in lines[0] and "--resume gone-1" in lines[0]
    assert "Traceback" not in out, out[-6000:]
    report = _report(work, "gone-1")
    assert report["exit_code"] == 1 and report["progress"]["committed"]
    rows = _rows(report)
    assert rows["p0.a"] == rows["p0.gate"] == "COMPLETED" and rows["p1.b"] == "FAILED"
    assert sorted(_marks(work)) == ["a", "final", "gate"]  # p1 never started; the cleanup ran

    server.start()
    again = _grd(work, server.server.api_url, "--resume", "gone-1", retries=2)
    out = _finish(again)
    assert again.returncode == 0, out[-6000:]
    assert sorted(_marks(work)) == ["a", "b", "final", "final", "gate"]  # a and gate were not run again
    rows = _rows(_report(work, "gone-1"))
    assert rows == {"p0.a": "COMPLETED", "p0.gate": "COMPLETED", "p1.b": "COMPLETED"}
