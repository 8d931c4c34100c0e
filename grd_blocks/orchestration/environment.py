"""What a command receives (docs/design.md): its environment and where its own checkpoints live.

Invariant: a command's environment is the parent's (as it was when the run started), then the spec's ``env``,
then grd's ``GRD_*`` variables (grd's win); ``PYTHONUNBUFFERED=1`` unless the spec's ``env`` sets it. Secrets
of the store travel only as ``AWS_*`` variables, never inside ``GRD_CHECKPOINT_STORAGE_OPTIONS``. A local
store URL is made absolute, so a command with another ``cwd`` writes to the same place. The store's
retention travels as ``GRD_CHECKPOINT_KEEP_LAST`` / ``_KEEP_BEST`` / ``_MONITOR`` / ``_MODE`` (set only when
the store sets them), which ``RunCheckpoints.from_env()`` applies to the command's own checkpoints.
"""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grd_blocks.budget.stop_file import TIMEOUT_FILE_ENV
from grd_blocks.checkpoint.storage.layout import validate_run_key

__all__ = ["SECRET_WORDS", "StoreAccess", "absolute_url", "command_env"]

SECRET_WORDS = ("secret", "password", "token", "key_id", "access_key", "session")
"""Storage option names holding any of these never travel in ``GRD_CHECKPOINT_STORAGE_OPTIONS``."""


def absolute_url(url: str) -> str:
    """A store URL as a command with another ``cwd`` must see it: a local path made absolute."""
    if url.startswith("file://"):
        return "file://" + str(Path(url[len("file://"):]).absolute())
    if "://" in url or "::" in url:
        return url.rstrip("/")
    return str(Path(url).absolute())


@dataclass(frozen=True)
class StoreAccess:
    """How a command reaches the checkpoint store: URL, non-secret options, and secrets as env variables."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    secret_env: dict[str, str] = field(default_factory=dict)
    retention_env: dict[str, str] = field(default_factory=dict)  # GRD_CHECKPOINT_KEEP_LAST and the like

    @functools.cached_property
    def storage_options_json(self) -> str:
        """``GRD_CHECKPOINT_STORAGE_OPTIONS``: the non-secret options as JSON (computed once)."""
        return json.dumps(self.storage_options, sort_keys=True, default=str)

    def prefix(self, run_key: str, *parts: str) -> str:
        """``{url}/{run_key}/{parts...}``."""
        return "/".join([self.url.rstrip("/"), run_key, *parts])

    def command_url(self, run_key: str, phase: str, command: str) -> str:
        """A command's own checkpoint prefix: ``{url}/{run_key}/commands/{phase}.{command}``."""
        return self.prefix(run_key, "commands", f"{phase}.{command}")

    def environment(self, run_key: str, *parts: str) -> dict[str, str]:
        """What a child process needs to open ``{url}/{run_key}/{parts...}`` with
        ``RunCheckpoints.from_env()``: ``GRD_CHECKPOINT_URL``, ``GRD_CHECKPOINT_STORAGE_OPTIONS`` (no
        secrets), the secrets as ``AWS_*`` and the retention as ``GRD_CHECKPOINT_KEEP_LAST`` and the like.
        Every part must pass the run-key rule."""
        for part in (run_key, *parts):
            validate_run_key(part)
        return {
            **self.secret_env,
            **self.retention_env,
            "GRD_CHECKPOINT_URL": self.prefix(run_key, *parts),
            "GRD_CHECKPOINT_STORAGE_OPTIONS": self.storage_options_json,
        }


def _seconds(value: float) -> str:
    return "inf" if math.isinf(value) else f"{max(0.0, value):.3f}"


def command_env(
    *,
    spec_env: Mapping[str, str],
    run_key: str,
    attempt: int,
    time_left_s: float,
    grace_s: float,
    phase: str,
    command: str,
    store: StoreAccess | None,
    base: Mapping[str, str] | None = None,
    warn_s: float | None = None,
    warn_signal: int | None = None,
    timeout_file: str | os.PathLike[str] | None = None,
) -> dict[str, str]:
    """The full environment of one command (``GRD_TIME_LEFT_S`` and ``GRD_DEADLINE_UNIX`` are ``inf`` when
    it has no deadline; ``GRD_WARN_S`` and ``GRD_WARN_SIGNAL`` only when a warning is configured;
    ``GRD_TIMEOUT_FILE`` only when ``timeout_file`` is given: the file its processes create when they stop
    for their budget, see ``budget/stop_file.py``)."""
    env = dict(os.environ if base is None else base)
    env.update(spec_env)
    if "PYTHONUNBUFFERED" not in spec_env:
        env["PYTHONUNBUFFERED"] = "1"
    env.update(
        GRD_TIME_LEFT_S=_seconds(time_left_s),
        GRD_DEADLINE_UNIX="inf" if math.isinf(time_left_s) else f"{time.time() + max(0.0, time_left_s):.3f}",
        GRD_GRACE_S=_seconds(grace_s),
        GRD_RUN_KEY=run_key,
        GRD_ATTEMPT=str(attempt),
        GRD_PHASE=phase,
        GRD_COMMAND=command,
    )
    for name in ("GRD_WARN_S", "GRD_WARN_SIGNAL", TIMEOUT_FILE_ENV):
        env.pop(name, None)  # an outer grd's warning and timeout file are not this command's
    if warn_s is not None and warn_signal is not None:
        env["GRD_WARN_S"] = _seconds(warn_s)
        env["GRD_WARN_SIGNAL"] = signal.Signals(warn_signal).name
    if timeout_file is not None:
        env[TIMEOUT_FILE_ENV] = str(timeout_file)
    if store is not None:
        env.update(store.environment(run_key, "commands", f"{phase}.{command}"))
    return env
