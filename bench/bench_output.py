"""Output throughput: how long a command that prints N MB of lines takes through grd's capture.

The command is ``cat SOURCE`` (C speed, so the producer costs next to nothing): SOURCE holds N MB (default
200; ``--quick`` 20) of distinct 100-byte lines, written once before timing. Variants, in a random order per
round (``--rounds``, at least 3), so load drifts hit all of them alike:

* ``floor``: ``subprocess.run(stdout=file)``, no capture at all.
* ``run_command``: grd's runner alone, stdout a PTY (as grd runs commands), a log file, no ``on_line``.
* ``run_command_pipe``: the same with ``use_pty=False`` (what the PTY costs).
* ``line_batcher_file``: ``run_command`` with ``on_line`` = ``LineBatcher`` (the sink of the benchmark flow)
  into a logger whose ``logging.FileHandler`` writes every record; timed until the batcher is closed.
* ``grd_flow``: what ``grd run`` does: the ``grd-benchmark`` flow on a Prefect test-harness API, one phase,
  one command, its lines through ``get_run_logger()`` to Prefect's console handler (rendered by rich; sent to
  a file here instead of the terminal) and API handler; timed from the flow call until every log record has
  reached the API (``APILogWorker.drain_all``), since a user's run does not end before that.
  ``command_s`` is the command's own time in that run (run_command as the flow calls it).
* ``grd_flow_true``: the same flow running ``true``: a flow run's fixed cost, to set ``grd_flow`` against.
  (Prefect 3.8's flow-run heartbeat thread sleeps in 1 s steps and is joined when each flow run ends, so a
  flow's wall time is rounded up by up to 1 s per flow run, here two: the outer flow and the phase subflow.
  At small sizes ``grd_flow`` minus ``grd_flow_true`` hides the output cost in that rounding; ``command_s``
  does not.)

Checks: every variant's log file (or stdout file) must be byte-identical to SOURCE (sha256), every round. The
``line_batcher_file`` handler's file, with each line's ``label | `` prefix removed, must hash the same. In the
first round the lines of ``grd_flow`` are read back from the API and hashed too (count and sha256).

Reported: per variant the median wall time, min/max and relative spread, MB/s (10^6 bytes), and the ratios;
the issue's target is ``grd_flow`` / ``run_command`` <= 2 (also given for ``command_s`` and for
``line_batcher_file``). Load average before/after.

    .venv/bin/python bench/bench_output.py [--quick] [--mb N] [--rounds N] [--no-prefect] [--out PATH]

Writes bench/results/output.json (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import logging
import os
import platform
import random
import resource
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grd_blocks.orchestration.line_batches import LineBatcher  # noqa: E402
from grd_blocks.process import run_command  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "output.json"
LINE = 100  # bytes per line, newline included
TARGET_RATIO = 2.0
LABEL = "p.c"  # phase.command, as the benchmark flow labels a command's lines
MB = 1_000_000


@dataclass
class Sample:
    wall_s: float
    cpu_s: float  # this process's user+system CPU over the call (the API server's is not in it)
    log_ok: bool
    extra: dict[str, Any]


Variant = Callable[[Path], tuple[Path, dict[str, Any]]]  # (work dir) -> (file to check, extras)


def write_source(path: Path, size: int) -> str:
    """``size // LINE`` distinct ASCII lines of ``LINE`` bytes; returns their sha256."""
    pool = (string.ascii_letters + string.digits) * 3
    digest = hashlib.sha256()
    with path.open("wb") as out:
        for start in range(0, size // LINE, 10_000):
            stop = min(size // LINE, start + 10_000)
            block = "".join(f"{i:010d} {pool[i % 62 : i % 62 + LINE - 12]}\n" for i in range(start, stop))
            data = block.encode()
            digest.update(data)
            out.write(data)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --- variants without Prefect ---------------------------------------------------------------------------


def floor(source: Path) -> Variant:
    def run(work: Path) -> tuple[Path, dict[str, Any]]:
        out = work / "floor.out"
        with out.open("wb") as handle:
            subprocess.run(["cat", str(source)], stdout=handle, check=True)
        return out, {}

    return run


def runner_alone(source: Path, *, use_pty: bool) -> Variant:
    def run(work: Path) -> tuple[Path, dict[str, Any]]:
        log = work / "runner.log"
        outcome = run_command(["cat", str(source)], log_path=log, use_pty=use_pty)
        assert outcome.returncode == 0, outcome
        return log, {"containment": outcome.containment}

    return run


def batcher_to_file(source: Path) -> Variant:
    def run(work: Path) -> tuple[Path, dict[str, Any]]:
        log, lines_file = work / "batcher.log", work / "lines.log"
        handler = logging.FileHandler(lines_file, mode="w", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger = logging.getLogger("bench.output.lines")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        try:
            sink = LineBatcher(logger, LABEL)
            outcome = run_command(["cat", str(source)], log_path=log, on_line=sink)
            sink.close()
            handler.flush()
        finally:
            logger.removeHandler(handler)
            handler.close()
        assert outcome.returncode == 0, outcome
        return log, {"lines_file": lines_file}

    return run


def check_lines_file(extra: dict[str, Any], total: int) -> None:
    """The FileHandler's records, prefix removed (checked after timing): see ``shown_and_counted``."""
    lines_file = extra.pop("lines_file")
    with lines_file.open("r", encoding="utf-8", newline="\n") as handle:
        verdict = shown_and_counted((line.rstrip("\n") for line in handle), total)
    extra.update(handler_lines=verdict["shown"], handler_lines_ok=verdict["ok"],
                 handler_lines_counted=verdict["counted"])
    lines_file.unlink()


def source_line(i: int) -> str:
    """Line ``i`` of the source, as ``write_source`` wrote it (newline excluded)."""
    pool = (string.ascii_letters + string.digits) * 3
    return f"{i:010d} {pool[i % 62 : i % 62 + LINE - 12]}"


def shown_and_counted(lines: Iterable[str], total: int) -> dict[str, Any]:
    """The run log is for reading: it may show fewer lines than the command printed, counting the others in
    place ("[grd: N line(s) ... not shown here"). OK when every shown line is a whole source line, in order,
    and shown + counted is the source's line count exactly."""
    shown = counted = 0
    last = -1
    ok = True
    prefix = f"{LABEL} | "
    for line in lines:
        body = line.removeprefix(prefix)
        if body.startswith("[grd: "):
            counted += int(body.split(" ")[1])
            continue
        index = int(body[:10]) if body[:10].isdigit() else -1
        ok = ok and index > last and body == source_line(index)
        last = index
        shown += 1
    return {"shown": shown, "counted": counted, "ok": ok and shown + counted == total}


# --- the grd flow on a Prefect API ----------------------------------------------------------------------


@contextlib.contextmanager
def prefect_api(console: Path) -> Iterator[TextIO]:
    """A Prefect test-harness API for the whole run; Prefect's console handler renders into ``console``."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    import prefect.main  # noqa: F401  # sets up Prefect's logging (its console handler on the root logger)
    from prefect.logging.handlers import PrefectConsoleHandler
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120), console.open("w", encoding="utf-8") as text:
        handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
        if not handlers:
            raise RuntimeError("Prefect's console handler is not on the root logger: the figures would lie")
        before = [h.console.file for h in handlers]
        for handler in handlers:
            handler.console.file = text  # the user's terminal, here a file: rendering is still paid
        try:
            yield text
        finally:
            for handler, file in zip(handlers, before, strict=True):
                handler.console.file = file


def _spec(path: Path, argv: list[str]) -> Path:
    path.write_text(
        "name: output\ntimeout: 1h\nphases:\n  - name: p\n    timeout: 1h\n    commands:\n"
        f"      - {{name: c, run: {json.dumps(argv)}, timeout: 30m}}\n"
    )
    return path


def grd_flow(argv: list[str], tag: str) -> Variant:
    from prefect.logging.handlers import APILogWorker

    from flows.benchmark import benchmark
    from grd_blocks.report import BenchmarkReport

    count = [0]

    def run(work: Path) -> tuple[Path, dict[str, Any]]:
        count[0] += 1
        key = f"bench-output-{tag}-{os.getpid()}-{count[0]}"
        spec = _spec(work / f"{key}.yaml", argv)
        t0 = time.perf_counter()
        state = benchmark(spec_path=str(spec), run_key=key, store=str(work / "store"),
                          report_path=str(work / "reports" / f"{key}.json"), return_state=True)
        flow_s = time.perf_counter() - t0
        APILogWorker.drain_all(timeout=600)
        report = BenchmarkReport.model_validate(state.result(raise_on_failure=False))
        row = report.phases[0].commands[0]
        assert row.status.value == "COMPLETED" and row.log_path, row
        return Path(row.log_path), {"command_s": row.elapsed_s, "flow_s": flow_s, "run_key": key,
                                    "drain_s": time.perf_counter() - t0 - flow_s}

    return run


def api_lines(since: datetime.datetime, total: int) -> dict[str, Any]:
    """Read this run's command lines back from the API (records after ``since``): ``shown_and_counted``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTimestamp

    records: list[str] = []
    prefix = f"{LABEL} | "
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            window = LogFilterTimestamp(after_=since)  # type: ignore[arg-type]  # pendulum-typed field
            page = client.read_logs(LogFilter(timestamp=window), limit=200, offset=offset)
            offset += len(page)
            records += [log.message for log in page if log.message.startswith(prefix)]
            if len(page) < 200:
                break
    verdict = shown_and_counted((line for record in records for line in record.split("\n")), total)
    return {"api_records": len(records), "api_lines": verdict["shown"],
            "api_lines_counted": verdict["counted"], "api_lines_ok": verdict["ok"]}


# --- rounds and statistics ------------------------------------------------------------------------------


def timed(variant: Variant, work: Path, expected: str | None) -> Sample:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    checked, extra = variant(work)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    log_ok = expected is None or sha256_file(checked) == expected
    checked.unlink(missing_ok=True)
    return Sample(wall, cpu, log_ok, extra)


def describe(samples: list[Sample], size: int) -> dict[str, Any]:
    walls = [s.wall_s for s in samples]
    median = statistics.median(walls)
    out: dict[str, Any] = {
        "rounds": len(samples),
        "median_s": median,
        "min_s": min(walls),
        "max_s": max(walls),
        "spread": (max(walls) - min(walls)) / median if median else None,
        "mb_per_s": size / MB / median if median and size else None,  # None: prints nothing
        "cpu_median_s": statistics.median(s.cpu_s for s in samples),
        "walls_s": walls,
        "log_sha256_ok": all(s.log_ok for s in samples),
    }
    keys = {k for s in samples for k, v in s.extra.items() if isinstance(v, float)}
    for key in sorted(keys):
        out[f"{key}_median"] = statistics.median(s.extra[key] for s in samples if key in s.extra)
    for key in ("handler_lines_ok", "api_lines_ok"):
        seen = [s.extra[key] for s in samples if key in s.extra]
        if seen:
            out[key] = all(seen)
    for key in ("api_records", "api_lines", "handler_lines", "containment"):
        seen = [s.extra[key] for s in samples if key in s.extra]
        if seen:
            out[key] = seen[0]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 MB")
    parser.add_argument("--mb", type=float, default=None, help="MB (10^6 bytes) the command prints (200)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-prefect", action="store_true", help="skip the grd flow variants")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    size_mb = args.mb if args.mb is not None else (20.0 if args.quick else 200.0)
    size = int(size_mb * MB) // LINE * LINE
    results: dict[str, Any] = {
        "benchmark": "output",
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                    "python": platform.python_version()},
        "config": {**vars(args), "out": str(args.out), "bytes": size, "line_bytes": LINE,
                   "lines": size // LINE},
        "loadavg_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory(prefix="grd-bench-output-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        source = work / "source.txt"
        expected = write_source(source, size)
        variants: dict[str, Variant] = {
            "floor": floor(source),
            "run_command": runner_alone(source, use_pty=True),
            "run_command_pipe": runner_alone(source, use_pty=False),
            "line_batcher_file": batcher_to_file(source),
        }
        checks: dict[str, str | None] = dict.fromkeys(variants, expected)
        if not args.no_prefect:
            console = stack.enter_context(prefect_api(work / "console.txt"))
            variants["grd_flow"] = grd_flow(["cat", str(source)], "cat")
            variants["grd_flow_true"] = grd_flow(["true"], "true")
            checks.update(grd_flow=expected, grd_flow_true=None)
            timed(variants["grd_flow_true"], work, None)  # warm-up: imports, first flow run, the store
        rng = random.Random(args.seed)
        samples: dict[str, list[Sample]] = {name: [] for name in variants}
        for index in range(args.rounds):
            order = list(variants)
            rng.shuffle(order)
            for name in order:
                since = _now_utc()
                sample = timed(variants[name], work, checks[name])
                if name == "line_batcher_file":
                    check_lines_file(sample.extra, size // LINE)
                if name == "grd_flow" and index == 0:
                    sample.extra.update(api_lines(since, size // LINE))
                samples[name].append(sample)
            print(f"round {index + 1}/{args.rounds}: " + ", ".join(
                f"{n} {samples[n][-1].wall_s:.2f}s" for n in variants), flush=True)
        results["variants"] = {name: describe(found, 0 if name == "grd_flow_true" else size)
                               for name, found in samples.items()}
        if not args.no_prefect:
            console.flush()
            results["console_bytes"] = os.fstat(console.fileno()).st_size
    results["loadavg_after"] = os.getloadavg()
    results["ratios"] = ratios(results["variants"])
    ratio = results["ratios"].get("grd_flow_over_run_command")
    results["meets_target"] = None if ratio is None else ratio <= TARGET_RATIO
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"wrote {args.out}")
    verdicts = [v[k] for v in results["variants"].values()
                for k in ("log_sha256_ok", "handler_lines_ok", "api_lines_ok") if k in v]
    return 0 if all(verdicts) else 1


def _now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def ratios(variants: dict[str, Any]) -> dict[str, float]:
    base = variants["run_command"]["median_s"]
    out = {f"{name}_over_run_command": v["median_s"] / base for name, v in variants.items()}
    out["run_command_over_floor"] = base / variants["floor"]["median_s"]
    flow = variants.get("grd_flow")
    if flow is not None:
        out["grd_flow_command_s_over_run_command"] = flow["command_s_median"] / base
        fixed = variants["grd_flow_true"]["median_s"]
        out["grd_flow_minus_fixed_over_run_command"] = (flow["median_s"] - fixed) / base
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = ["| variant | median s | min-max s | spread | MB/s | CPU s (this process) | log sha256 |",
             "|---|---|---|---|---|---|---|"]
    for name, v in results["variants"].items():
        rate = "-" if v["mb_per_s"] is None else f"{v['mb_per_s']:.1f}"
        lines.append(f"| {name} | {v['median_s']:.2f} | {v['min_s']:.2f}-{v['max_s']:.2f} | "
                     f"{v['spread']:.0%} | {rate} | {v['cpu_median_s']:.2f} | "
                     f"{'ok' if v['log_sha256_ok'] else 'MISMATCH'} |")
    lines.append("")
    lines += [f"- {k}: {v:.2f}" for k, v in results["ratios"].items()]
    flow = results["variants"].get("grd_flow")
    if flow is not None:
        lines.append(f"- grd_flow: command_s {flow['command_s_median']:.2f}, log drain after the flow "
                     f"{flow['drain_s_median']:.2f} s; API lines {flow.get('api_lines')} "
                     f"({'ok' if flow.get('api_lines_ok') else 'MISMATCH'}); console "
                     f"{results.get('console_bytes', 0) / MB:.0f} MB")
    batcher = results["variants"]["line_batcher_file"]
    lines.append(f"- line_batcher_file: handler file lines {batcher.get('handler_lines')} "
                 f"({'ok' if batcher.get('handler_lines_ok') else 'MISMATCH'})")
    verdict = {True: "met", False: "NOT met", None: "not measured"}[results["meets_target"]]
    lines.append(f"- target grd_flow / run_command <= {TARGET_RATIO}: {verdict}")
    lines.append(f"- load average before {results['loadavg_before'][0]:.2f}, after "
                 f"{results['loadavg_after'][0]:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
