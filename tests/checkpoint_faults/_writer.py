"""A pre-forked checkpoint writer for crash tests: imports grd once, forks one writer process per trial.

Run as ``python -m tests.checkpoint_faults._writer``. Protocol (one JSON object per stdin line, answers on
stdout): ``{"url", "storage_options", "progress", "log", "keep_last", "size"}`` -> ``pid <pid>`` once the
writer is forked, then ``exit <pid> <wait status>`` once it has died (the test SIGKILLs it). The writer
resumes
the run from ``latest()`` and saves ``state_for(i)`` as step ``i`` forever, appending ``begin i <t>`` to
the progress
file before each save and ``done i <t>`` after ``save`` returned (so every ``done`` line is a committed
checkpoint).

Invariant: the zygote never opens a filesystem before forking (fsspec's event loop thread must not exist in a
fork parent), and a forked writer always leaves through ``os._exit``. To keep trials short, S3 writers
share an
aiobotocore session whose service-model JSON was parsed once in the zygote (pure data, no loop, no sockets);
each writer still builds its own client and connections after the fork.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

from aiobotocore.session import AioSession, get_session

from grd_blocks.checkpoint import RunCheckpoints
from tests.checkpoint_faults._states import state_for


def _preloaded_session() -> AioSession:
    session = get_session()
    loader = session.get_component("data_loader")
    loader.load_service_model("s3", "service-2")
    loader.load_service_model("s3", "endpoint-rule-set-1")
    for name in ("endpoints", "partitions", "sdk-default-configuration", "_retry"):
        loader.load_data(name)
    return session


_SESSION = _preloaded_session()


def _note(fd: int, line: str) -> None:
    # CLOCK_MONOTONIC is system-wide, so the test can compare these stamps with its own clock
    os.write(fd, f"{line} {time.monotonic():.6f}\n".encode())


def _write_forever(request: dict[str, Any]) -> None:
    progress = os.open(request["progress"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    options = dict(request["storage_options"])
    if str(request["url"]).startswith("s3://"):
        options["session"] = _SESSION
    run = RunCheckpoints.from_url(request["url"], storage_options=options, keep_last=request["keep_last"])
    latest = run.latest()
    index = 0 if latest is None else latest.index + 1
    _note(progress, f"ready {index}")
    while True:
        _note(progress, f"begin {index}")
        run.save(state_for(index, request["size"]), step=index)
        _note(progress, f"done {index}")
        index += 1


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                os.dup2(log, 2)
                _write_forever(request)
            except BaseException:
                traceback.print_exc()
                code = 3
            finally:
                os._exit(code)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {pid} {status}", flush=True)


if __name__ == "__main__":
    main()
