"""`grd run`'s checks before the first command: every flag that cannot work is one line and exit 2, up front.

Invariant: ``preflight`` returns only when every flag of `grd run` can do its job, and raises
``PreflightError`` (flag, value, what is wrong, the fix) otherwise, before any command runs:

* ``--run-key`` / ``--resume`` are valid run keys and do not contradict each other;
* ``--report FILE`` (default ``reports/<run key>/report.json``): every name in it fits the file system
  (255 bytes a name, 4096 a path), FILE is not a directory nor anything but a regular file, its directory
  exists or can be created, and a probe file can be created and removed there (the report is written
  through a temp file in that directory, and command logs go beside it);
* ``--store NAME|URL`` (default: the block named ``default``): a block name names a saved block; the URL
  names a place (``s3://`` with no bucket or ``s3:/b`` a slash short are refused, not taken as a local folder
  ``s3:``), is not a memory store (a resume runs in a later process), and opens (a known protocol, its
  package installed); its root is a directory (local disk) and a probe object
  ``.grd-probe-<random>`` can be written there and removed (so a regular file, a read-only place, an S3
  server that cannot be reached or a bucket that does not exist are found now, not after the benchmark);
Store checks need the Prefect API only for a block name (or the default block). ``--resume KEY`` with no
progress under KEY is not refused (an attempt killed before its first command finished left none, and its
resume must still stop that attempt's commands and count its attempts): the run warns in its log and its
report (orchestration/run.py).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from grd_blocks.checkpoint import CheckpointEngine
from grd_blocks.checkpoint.storage.safe_io import describe
from grd_blocks.errors import GrdError, InvalidRunKey, PreflightError

__all__ = ["check_report", "check_run_keys", "check_store", "preflight"]

_PROBE_PREFIX = ".grd-probe-"


def check_run_keys(run_key: str | None, resume: str | None) -> None:
    """Both keys valid; equal when both are given."""
    from grd_blocks.orchestration.runkey import validate_run_key

    for flag, key in (("--run-key", run_key), ("--resume", resume)):
        if key is None:
            continue
        try:
            validate_run_key(key)
        except InvalidRunKey:
            raise PreflightError(flag, key, "is not a valid run key (1-128 characters of [A-Za-z0-9_.-], "
                                 "not '.' or '..')", "use e.g. nightly-2026-11-23") from None
    if run_key and resume and run_key != resume:
        raise PreflightError("--resume", resume, f"differs from --run-key {run_key!r}",
                             "pass one of them (resuming continues that run under its own key)")


_NAME_MAX = 255
_PATH_MAX = 4096


def check_report(report: str | None) -> None:
    """``--report`` (or the default reports/ directory) can be written."""
    flag_value = report if report is not None else "reports/<run key>/report.json"
    target = Path(report) if report is not None else None
    directory = target.parent if target is not None else Path("reports")
    fix = "pass a file in a writable directory, e.g. --report reports/run.json"
    _check_name_lengths("--report", flag_value, target, fix)
    if target is not None and (target.exists() or target.is_symlink()):
        if target.is_dir():
            raise PreflightError("--report", flag_value, "is a directory", "name a file in it, e.g. "
                                 f"--report {target / 'report.json'}")
        if not target.is_file():
            raise PreflightError("--report", flag_value, "exists and is not a regular file", fix)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PreflightError("--report", flag_value, f"its directory {str(directory)!r} cannot be created "
                             f"({exc.strerror or exc})", fix) from None
    probe = directory / f"{_PROBE_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PreflightError("--report", flag_value, f"cannot write in {str(directory)!r} "
                             f"({exc.strerror or exc})", fix) from None


def _check_name_lengths(flag: str, value: str, target: Path | None, fix: str) -> None:
    """Every name in ``target`` fits the file system's limits (255 bytes a name, 4096 a path on Linux)."""
    if target is None:
        return
    longest = max((len(os.fsencode(part)) for part in target.parts), default=0)
    if longest > _NAME_MAX:
        raise PreflightError(flag, value[:60] + "...", f"has a name of {longest} bytes; the most a file "
                             f"system allows is {_NAME_MAX}", fix)
    if len(os.fsencode(str(target.absolute()))) >= _PATH_MAX:
        raise PreflightError(flag, value[:60] + "...",
                             f"is longer than the {_PATH_MAX} bytes a path may have", fix)


def _store_fix(value: str) -> str:
    return ("pass a writable directory (./checkpoints), s3://bucket/prefix on a reachable server, or a saved "
            f"block (`grd store create {value if '/' not in value else 'NAME'} URL`)")


def check_store(store: str | None) -> CheckpointEngine:
    """The store ``--store`` names, after a probe object was written to its root and removed; returns its
    engine."""
    from grd_blocks.prefect_edge.block import resolve_store

    shown = store if store is not None else "default"
    try:
        engine = resolve_store(store).engine()
    except GrdError as exc:  # no such block, an unknown protocol: the message names the fix
        raise PreflightError("--store", shown, str(exc), "") from None
    fs, root = engine.fs, engine.path
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    if "memory" in protocols:
        raise PreflightError("--store", shown, f"{engine.url} is a memory store: it lives only in this "
                             "process, so a resume (a later process) would find nothing", _store_fix(shown))
    probe = f"{root.rstrip('/')}/{_PROBE_PREFIX}{uuid.uuid4().hex}"
    try:
        if "file" in protocols:
            if os.path.exists(root) and not os.path.isdir(root):
                raise PreflightError("--store", shown, f"{root} is {describe(root)}, not a directory",
                                     _store_fix(shown))
            os.makedirs(root, exist_ok=True)
        fs.pipe_file(probe, b"grd preflight probe")
        fs.rm_file(probe)
    except PreflightError:
        raise
    except Exception as exc:
        with contextlib.suppress(Exception):
            fs.rm_file(probe)
        raise PreflightError("--store", shown, f"cannot write a probe object to {engine.url} "
                             f"({type(exc).__name__}: {exc})", _store_fix(shown)) from None
    return engine


def preflight(*, run_key: str | None, resume: str | None, report: str | None, store: str | None) -> None:
    """Every check above, cheapest first (module docstring)."""
    check_run_keys(run_key, resume)
    check_report(report)
    check_store(store)
