"""The benchmark spec as pydantic v2 models: benchmark -> phases -> commands, plus optional cleanups.

Invariants:

- A model that validates is runnable as written: names match ``[A-Za-z0-9_.-]{1,63}``, durations are
  ``None`` (not set) or finite seconds >= 0 and at most ``MAX_DURATION_S`` (what timers, ``setitimer`` and
  lock waits can honour), timeouts are > 0, commands are a non-empty shell string or a non-empty argv of
  strings, env maps strings to strings, names are unique within their scope, unknown keys are refused, and
  every string handed to the OS (command, argv items, env names and values, cwd) has no NUL and encodes to
  the bytes exec needs (``os.fsencode``).
- Every rule violation raises a ``PydanticCustomError`` of type ``"grd_spec"`` whose context carries
  ``problem``, ``fix`` and, where the culprit is deeper than the validated model, ``at`` (the rest of the
  location); ``loader.py`` turns that into a ``SpecError`` naming file, line and key.
- ``None`` means "not set here"; ``resolve.py`` applies precedence command > phase > defaults > built-in.
- Models are frozen.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, model_validator
from pydantic_core import PydanticCustomError

from grd_blocks.budget.durations import parse_duration
from grd_blocks.errors import DurationError

__all__ = [
    "NAME_PATTERN",
    "BenchmarkSpec",
    "CommandSpec",
    "Defaults",
    "OnTimeout",
    "PhaseSpec",
    "RunnerSpec",
    "WarnSpec",
    "dask_address_problem",
    "ray_address_problem",
]

OnTimeout = Literal["continue", "stop_phase", "stop_benchmark"]
"""After a command times out: run the next one, skip the rest of its phase, or the rest of the benchmark."""

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,63}")
MAX_DURATION_S = 365 * 86_400.0
"""Longest timeout or grace a spec may set (365 days); write null for no limit."""
_NAME_FIX = "use 1-63 letters, digits, '_', '.' or '-', e.g. 'train_mlp'"


def spec_error(problem: str, fix: str, at: tuple[str | int, ...] = ()) -> PydanticCustomError:
    """The error every spec rule raises; ``at`` locates the culprit below the model being validated."""
    return PydanticCustomError("grd_spec", "{problem}; {fix}", {"problem": problem, "fix": fix, "at": at})


def _name(value: object) -> object:
    if not isinstance(value, str):
        return value  # pydantic reports the wrong type
    if not NAME_PATTERN.fullmatch(value) or set(value) == {"."}:
        shown = re.sub(r"[^A-Za-z0-9_.-]+", "_", value)[:63].strip(".") or "my_name"
        raise spec_error(
            f"name {value!r} is not allowed: names are 1-63 characters of [A-Za-z0-9_.-] and not only dots",
            f"{_NAME_FIX} (say {shown!r})",
        )
    return value


def _duration(value: object) -> object:
    try:
        seconds = parse_duration(value)  # type: ignore[arg-type]
    except DurationError as exc:
        raise spec_error(
            f"duration {value!r} is invalid: {exc.rule}",
            "write seconds (90, 1.5), '90s', '5m', '1h30m', or null for no limit",
        ) from None
    if seconds is not None and seconds > MAX_DURATION_S:
        raise spec_error(
            f"duration {value!r} is {seconds:.3g}s, more than the longest grd can time "
            f"({MAX_DURATION_S:.0f}s, 365 days)",
            "write null (or leave the key out) for no limit",
        )
    return seconds


def _os_text(value: str, what: str, at: tuple[str | int, ...] = ()) -> None:
    """Refuse a string the OS cannot take: a NUL, or a character with no bytes in the filesystem encoding."""
    if "\0" in value:
        raise spec_error(f"{what} contains a NUL byte", "remove it: no program can receive one", at)
    try:
        os.fsencode(value)
    except UnicodeEncodeError as exc:
        raise spec_error(
            f"{what} contains {value[exc.start]!r} at position {exc.start}, which the OS cannot encode",
            "remove it (a lone surrogate escape is not a character)",
            at,
        ) from None


def _timeout(value: object) -> object:
    seconds = _duration(value)
    if seconds == 0:
        raise spec_error(
            "a timeout of 0 would stop the work before it starts",
            "use null (or leave the key out) for no limit, or a positive duration like '5m'",
        )
    return seconds


def _run(value: object) -> object:
    if isinstance(value, str):
        if not value.strip():
            raise spec_error("the command is empty", "write a shell command such as 'echo hello'")
        _os_text(value, "the command")
        return value
    if isinstance(value, list):
        if not value:
            raise spec_error("the command list is empty", "write an argv list such as [python, train.py]")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise spec_error(
                    f"argv item {i} is {item!r} ({type(item).__name__}), not a string",
                    f'quote it: "{item}"'
                    if isinstance(item, int | float | bool)
                    else "write every item as a string",
                    (i,),
                )
            _os_text(item, f"argv item {i}", (i,))
        if not value[0].strip():
            raise spec_error(
                "the program (argv item 0) is empty", "name the program to run, e.g. python", (0,)
            )
        return value
    raise spec_error(
        f"run must be a string (run under /bin/sh -c) or a list of strings (argv), "
        f"not {type(value).__name__}",
        "write run: 'echo hello' or run: [python, train.py]",
    )


def _env(value: object) -> object:
    if not isinstance(value, dict):
        raise spec_error(
            f"env must be a mapping of names to strings, not {type(value).__name__}", "write env: {SEED: '1'}"
        )
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key or "=" in key:
            raise spec_error(
                f"environment variable name {key!r} is invalid",
                "use a non-empty name without '=' such as SEED",
                (str(key),),
            )
        _os_text(key, f"environment variable name {key!r}", (key,))
        if isinstance(item, bool):
            item = "true" if item else "false"
        elif isinstance(item, int | float):
            item = str(item)
        if not isinstance(item, str):
            raise spec_error(
                f"env value of {key} is {type(item).__name__ if item is not None else 'null'}, not a string",
                f'quote it: {key}: "..."',
                (key,),
            )
        _os_text(item, f"env value of {key}", (key,))
        out[key] = item
    return out


_WARN_FIX = "write warn: {signal: USR1, before: 60s}"


def _signal(value: object) -> object:
    """A signal name (``USR1``, ``SIGUSR1``) or number -> its number; KILL and STOP cannot be a warning."""
    number: int | None = None
    if isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        member = getattr(signal.Signals, name, None) if name.isidentifier() else None
        number = int(member) if member is not None else None
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value if value in {int(s) for s in signal.Signals} else None
    if number is None:
        raise spec_error(
            f"signal {value!r} is not a signal name or number", f"{_WARN_FIX} (or TERM, INT, HUP, USR2)"
        )
    if number in (signal.SIGKILL, signal.SIGSTOP):
        raise spec_error(
            f"signal {signal.Signals(number).name} cannot be caught, so it cannot warn",
            "use a catchable signal such as USR1 (SLURM's --signal convention)",
        )
    return number


def _positive(value: object) -> object:
    seconds = _duration(value)
    if seconds is None or seconds == 0:
        raise spec_error(f"warn.before is {value!r}: it must be a positive duration", _WARN_FIX)
    return seconds


def _cwd(value: object) -> object:
    if isinstance(value, str):
        _os_text(value, "cwd")
    return value


def _cleanup(value: object) -> object:
    if isinstance(value, str | list):
        return {"name": "cleanup", "run": value}
    if isinstance(value, dict) and "name" not in value:
        return {"name": "cleanup", **value}
    return value


DASK_SCHEMES = ("tcp", "tls", "ws", "wss")
MAX_DASK_ATTEMPTS = 10
_DASK_FIX = "write runner: {dask: 'tcp://scheduler:8786'} (or runner: local for this machine)"
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>[0-9]{1,5}))?")


def dask_address_problem(value: object) -> str | None:
    """Why ``value`` is not a Dask scheduler address ``SCHEME://HOST[:PORT]`` (SCHEME one of tcp, tls, ws,
    wss; PORT 1-65535); None when it is one. The spec, the flow parameter and the environment setting share
    this rule."""
    if not isinstance(value, str):
        return f"a Dask scheduler address must be a string, not {type(value).__name__}"
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in DASK_SCHEMES:
        return (f"Dask scheduler address {value!r} does not start with one of "
                f"{', '.join(s + '://' for s in DASK_SCHEMES)}")
    match = _HOST_PORT.fullmatch(rest)
    if match is None:
        return f"Dask scheduler address {value!r} is not SCHEME://HOST[:PORT] (no path, no spaces)"
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        return f"Dask scheduler address {value!r} has port {port}, outside 1-65535"
    return None


def _dask_address(value: object) -> object:
    if value is None:
        return None
    problem = dask_address_problem(value)
    if problem is not None:
        raise spec_error(problem, _DASK_FIX)
    return value


_RAY_FIX = ("write runner: {ray: 'ray://head:10001'} (Ray Client), {ray: 'head:6379'} (the cluster's GCS, "
            "from a node of it) or {ray: auto} (the cluster this machine is part of)")


def ray_address_problem(value: object) -> str | None:
    """Why ``value`` is not a Ray address: ``auto``, ``ray://HOST[:PORT]`` or ``HOST:PORT`` (PORT 1-65535);
    None when it is one. The spec and the environment setting share this rule."""
    if not isinstance(value, str):
        return f"a Ray address must be a string, not {type(value).__name__}"
    if value == "auto":
        return None
    scheme, sep, rest = value.partition("://")
    if sep and scheme != "ray":
        return f"Ray address {value!r} has scheme {scheme}://; Ray takes ray:// (or no scheme: HOST:PORT)"
    match = _HOST_PORT.fullmatch(rest if sep else value)
    if match is None:
        return f"Ray address {value!r} is not ray://HOST[:PORT], HOST:PORT or auto (no path, no spaces)"
    port = match.group("port")
    if not sep and port is None:
        return f"Ray address {value!r} names no port: write HOST:PORT (the GCS, 6379 by default) or ray://HOST"
    if port is not None and not 1 <= int(port) <= 65535:
        return f"Ray address {value!r} has port {port}, outside 1-65535"
    return None


def _ray_address(value: object) -> object:
    if value is None:
        return None
    problem = ray_address_problem(value)
    if problem is not None:
        raise spec_error(problem, _RAY_FIX)
    return value


def _runner(value: object) -> object:
    if value == "local":
        return {"dask": None}  # this machine, said explicitly: it overrides a wider level's runner
    if value is not None and not isinstance(value, dict):
        raise spec_error(f"runner {value!r} is neither 'local' nor a mapping", _DASK_FIX)
    return value


Name = Annotated[str, BeforeValidator(_name)]
Duration = Annotated[float | None, BeforeValidator(_duration)]
Timeout = Annotated[float | None, BeforeValidator(_timeout)]
Run = Annotated[str | list[str], BeforeValidator(_run)]
Env = Annotated[dict[str, str], BeforeValidator(_env)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WarnSpec(_Model):
    """A signal sent to the command's whole tree ``before`` seconds before its deadline."""

    signal: Annotated[int, BeforeValidator(_signal)] = Field(
        description="A signal name (USR1, SIGUSR1) or number; not KILL or STOP."
    )
    before: Annotated[float, BeforeValidator(_positive)] = Field(
        description="How long before the deadline it is sent (a duration > 0)."
    )


class RunnerSpec(_Model):
    """Where a phase's commands run: a Dask cluster (``dask``) or a Ray cluster (``ray``), each command under
    grd's runner on a worker; ``runner: local`` is this machine."""

    dask: Annotated[str | None, BeforeValidator(_dask_address)] = Field(
        default=None,
        description="The Dask scheduler's address, SCHEME://HOST[:PORT] (tcp, tls, ws or wss); None (written "
        "runner: local) = this machine.",
    )
    ray: Annotated[str | None, BeforeValidator(_ray_address)] = Field(
        default=None,
        description="The Ray cluster's address: ray://HOST[:PORT] (Ray Client), HOST:PORT (its GCS) or auto.",
    )
    attempts: StrictInt = Field(
        default=3, ge=1, le=MAX_DASK_ATTEMPTS,
        description="Tries per command when its worker is lost mid-command (1-10), within its budget.",
    )
    num_cpus: float | None = Field(
        default=None, ge=0, description="With ray: the CPUs each command asks Ray for (Ray's default: 1)."
    )
    num_gpus: float | None = Field(
        default=None, ge=0, description="With ray: the GPUs each command asks Ray for (Ray's default: 0)."
    )

    @model_validator(mode="after")
    def _one_engine(self) -> RunnerSpec:
        if self.dask is not None and self.ray is not None:
            raise spec_error("runner names both a Dask and a Ray cluster",
                             "keep one of runner.dask and runner.ray", ("ray",))
        if "dask" not in self.model_fields_set and "ray" not in self.model_fields_set:
            raise spec_error("runner names no cluster", f"{_DASK_FIX}, or {_RAY_FIX}")
        for key in ("num_cpus", "num_gpus"):
            if getattr(self, key) is not None and self.ray is None:
                raise spec_error(f"runner.{key} is a Ray resource, but the runner is not Ray",
                                 f"drop {key}, or write runner: {{ray: ADDRESS, {key}: ...}}", (key,))
        return self


Runner = Annotated[RunnerSpec | None, BeforeValidator(_runner)]


class CommandSpec(_Model):
    """One command: a shell string or an argv list, with optional limits of its own."""

    name: Name = Field(description="Unique within its phase; [A-Za-z0-9_.-]{1,63}.")
    run: Run = Field(description="A string runs under /bin/sh -c; a list is executed directly (argv).")
    timeout: Timeout = Field(default=None, description="Its own limit; None falls back to defaults.timeout.")
    grace: Duration = Field(default=None, description="SIGTERM -> SIGKILL grace; None falls back.")
    env: Env = Field(
        default_factory=dict, description="Extra environment variables (merged over the parent's)."
    )
    cwd: Annotated[str | None, BeforeValidator(_cwd)] = Field(
        default=None, description="Working directory, relative to the spec file's directory."
    )
    on_timeout: OnTimeout | None = Field(
        default=None, description="Policy after it times out; None falls back."
    )
    warn: WarnSpec | None = Field(default=None, description="Pre-deadline signal; None falls back.")


Cleanup = Annotated[CommandSpec | None, BeforeValidator(_cleanup)]


def _unique(names: list[str], what: str, field: str, offset: int = 0) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise spec_error(
                f"{what} name {name!r} is used twice (items {seen[name] + offset} and {i + offset})",
                f"give each {what} a unique name",
                (field, i, "name"),
            )
        seen[name] = i


class PhaseSpec(_Model):
    """A group of commands run in order (or up to ``max_parallel`` at once) under the phase's own budget."""

    name: Name = Field(description="Unique within the benchmark; [A-Za-z0-9_.-]{1,63}.")
    timeout: Timeout = Field(
        default=None, description="The phase's budget; None = bounded only by the benchmark."
    )
    grace: Duration = Field(default=None, description="Grace for its commands that set none.")
    on_timeout: OnTimeout | None = Field(default=None, description="Policy for its commands that set none.")
    warn: WarnSpec | None = Field(default=None, description="Pre-deadline signal for commands that set none.")
    max_parallel: StrictInt = Field(
        default=1, ge=1,
        description="How many of its commands may run at once (with runner.dask: on the whole cluster).",
    )
    runner: Runner = Field(
        default=None,
        description="Where its commands run: {dask: ADDRESS} or 'local'; None falls back to the benchmark's.",
    )
    commands: list[CommandSpec] = Field(default_factory=list, description="Run in order.")
    cleanup: Cleanup = Field(
        default=None, description="Runs after the phase, even after a timeout (shielded)."
    )

    @model_validator(mode="after")
    def _names_unique(self) -> PhaseSpec:
        _unique([c.name for c in self.commands], "command", "commands")
        if self.cleanup is not None and self.cleanup.name in {c.name for c in self.commands}:
            raise spec_error(
                f"the cleanup's name {self.cleanup.name!r} is also a command's name in phase {self.name!r}",
                "give the cleanup its own name: cleanup: {name: teardown, run: ...}",
                ("cleanup", "name"),
            )
        return self


class Defaults(_Model):
    """Fallbacks for every command that does not set the key itself (nor its phase)."""

    timeout: Timeout = Field(default=None, description="Default command timeout; None = no limit.")
    grace: Duration = Field(default=None, description="Default grace; None = 5s built in.")
    on_timeout: OnTimeout | None = Field(default=None, description="Default policy; None = 'continue'.")
    warn: WarnSpec | None = Field(default=None, description="Default pre-deadline signal; None = none.")


class BenchmarkSpec(_Model):
    """A whole benchmark: its budget, defaults, phases and an optional final cleanup."""

    name: Name = Field(description="[A-Za-z0-9_.-]{1,63}.")
    timeout: Timeout = Field(default=None, description="The whole benchmark's budget; None = no limit.")
    grace: Duration = Field(
        default=None, description="Grace for commands when neither they, their phase nor defaults set one."
    )
    timeouts: StrictBool = Field(default=True, description="False disables every deadline (for debugging).")
    defaults: Defaults = Field(default_factory=Defaults, description="Fallbacks for commands.")
    runner: Runner = Field(
        default=None,
        description="Where the phases' commands run: {dask: ADDRESS} or 'local'; None falls back to the "
        "run's setting (the dask_scheduler parameter, GRD_DASK_SCHEDULER), else this machine.",
    )
    phases: list[PhaseSpec] = Field(description="Run in order; at least one.")
    cleanup: Cleanup = Field(
        default=None, description="Runs after all phases, even after a timeout (shielded)."
    )
    source: str = Field(default="<string>", description="The file it was loaded from (set by the loader).")
    base_dir: Path = Field(
        default_factory=Path.cwd, description="Directory relative cwd values resolve against."
    )

    @model_validator(mode="after")
    def _phases_valid(self) -> BenchmarkSpec:
        if not self.phases:
            raise spec_error(
                "the benchmark has no phases",
                "add phases: [{name: smoke, commands: [{name: hello, run: echo hello}]}]",
                ("phases",),
            )
        _unique([p.name for p in self.phases], "phase", "phases")
        for i, phase in enumerate(self.phases):
            if not phase.commands:
                raise spec_error(
                    f"phase {phase.name!r} has no commands",
                    "add commands: [{name: hello, run: echo hello}] or remove the phase",
                    ("phases", i, "commands"),
                )
        return self


def model_fields_at(model: type[BaseModel]) -> list[str]:
    """The keys a user may write in ``model`` (loader-set fields excluded)."""
    return [name for name in model.model_fields if name not in {"source", "base_dir"}]
