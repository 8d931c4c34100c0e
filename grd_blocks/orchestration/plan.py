"""The plan of a benchmark: every phase and command of a spec, resolved once, as plain picklable values.

Invariant: ``plan_benchmark`` is the one place where precedence (``resolve_command``) and ``timeouts: false``
are applied; everything after it reads the resolved values and never the spec. A command's entry carries all
it needs to start (what to run, where, its extra environment, its own timeout, grace, warning and
``on_timeout``); its budget is not in the plan: a budget starts when its node starts (``planning.py``).
With timeouts disabled every timeout and warning is None (cleanups included).

Where a phase's commands run is resolved here too, key by key like the rest: the phase's ``runner`` > the
benchmark's ``runner`` > the run's setting (the flow's ``dask_scheduler`` parameter, else the
``GRD_DASK_SCHEDULER`` environment variable, read at the edge: ``dask_address``; else ``GRD_RAY_ADDRESS``:
``ray_address``) > this machine. Cleanups always run on this machine (``PlannedCommand.dask`` and ``.ray``
are None for them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from grd_blocks.errors import UsageError
from grd_blocks.orchestration.planning import cleanup_timeout
from grd_blocks.spec import (
    BenchmarkSpec,
    CommandSpec,
    OnTimeout,
    PhaseSpec,
    RunnerSpec,
    WarnSpec,
    dask_address_problem,
    ray_address_problem,
    resolve_command,
)

__all__ = [
    "DASK_ENV",
    "RAY_ENV",
    "BenchmarkPlan",
    "DaskTarget",
    "PhasePlan",
    "PlannedCommand",
    "RayTarget",
    "dask_address",
    "plan_benchmark",
    "ray_address",
]

DASK_ENV = "GRD_DASK_SCHEDULER"
"""The environment variable naming the Dask scheduler of phases whose spec sets no ``runner``."""
DEFAULT_DASK_ATTEMPTS = 3


@dataclass(frozen=True)
class DaskTarget:
    """A Dask cluster that runs a phase's commands: its scheduler's address, and how many tries a command
    gets when the worker running it is lost (within its budget)."""

    address: str
    attempts: int = DEFAULT_DASK_ATTEMPTS


def dask_address(parameter: str | None, environ: Mapping[str, str]) -> str | None:
    """The run's Dask scheduler: ``parameter`` (the flow's ``dask_scheduler``) if set, else
    ``GRD_DASK_SCHEDULER`` from ``environ``, else None (this machine); ``UsageError`` naming the setting if
    it is not an address."""
    for name, value in (("parameter dask_scheduler", parameter), (f"environment variable {DASK_ENV}",
                                                                   environ.get(DASK_ENV))):
        if value is None or not value.strip():
            continue
        problem = dask_address_problem(value.strip())
        if problem is not None:
            raise UsageError(f"{name}: {problem}; write e.g. tcp://scheduler:8786, or leave it empty to run "
                             "commands on this machine")
        return value.strip()
    return None


RAY_ENV = "GRD_RAY_ADDRESS"
"""The environment variable naming the Ray cluster of phases whose spec sets no ``runner`` (a Dask scheduler
set for the run wins)."""


@dataclass(frozen=True)
class RayTarget:
    """A Ray cluster that runs a phase's commands: its address, the tries a command gets when the worker
    running it is lost (within its budget), and the resources each command asks Ray for (None: Ray's
    default)."""

    address: str
    attempts: int = DEFAULT_DASK_ATTEMPTS
    num_cpus: float | None = None
    num_gpus: float | None = None


def ray_address(environ: Mapping[str, str]) -> str | None:
    """The run's Ray cluster: ``GRD_RAY_ADDRESS`` from ``environ``, else None; ``UsageError`` naming the
    setting if it is not an address."""
    value = environ.get(RAY_ENV)
    if value is None or not value.strip():
        return None
    problem = ray_address_problem(value.strip())
    if problem is not None:
        raise UsageError(f"environment variable {RAY_ENV}: {problem}; write e.g. ray://head:10001, "
                         "head:6379 or auto, or leave it empty to run commands on this machine")
    return value.strip()


@dataclass(frozen=True, slots=True)
class PlannedCommand:
    """One command (or cleanup) with its settings resolved; ``phase`` is its phase's name, or the benchmark's
    for the benchmark's own cleanup."""

    phase: str
    name: str
    run: str | tuple[str, ...]
    timeout_s: float | None
    grace_s: float
    on_timeout: OnTimeout
    warn: WarnSpec | None = None
    cwd: Path | None = None
    env: tuple[tuple[str, str], ...] = ()
    cleanup: bool = False
    dask: DaskTarget | None = None  # the cluster it runs on (None: this machine)
    ray: RayTarget | None = None  # the Ray cluster it runs on (None: this machine)

    @property
    def label(self) -> str:
        """``phase.command``: its name in logs, task runs and progress."""
        return f"{self.phase}.{self.name}"


@dataclass(frozen=True)
class PhasePlan:
    """One phase: its own timeout, its concurrency, its commands in order and its cleanup."""

    name: str
    timeout_s: float | None
    max_parallel: int  # on a Dask runner: how many of its commands run at once on the whole cluster
    commands: tuple[PlannedCommand, ...]
    cleanup: PlannedCommand | None = None
    dask: DaskTarget | None = None
    ray: RayTarget | None = None

    def command(self, name: str) -> PlannedCommand:
        """The command (or cleanup) of this phase called ``name``; ``KeyError`` if there is none."""
        for command in self.commands:
            if command.name == name:
                return command
        if self.cleanup is not None and self.cleanup.name == name:
            return self.cleanup
        raise KeyError(f"phase {self.name!r} has no command {name!r}")


@dataclass(frozen=True)
class BenchmarkPlan:
    """The whole benchmark: ``timeouts`` False when the spec (or the caller) turned every deadline off."""

    name: str
    source: str
    timeout_s: float | None
    timeouts: bool
    phases: tuple[PhasePlan, ...]
    cleanup: PlannedCommand | None = None

    def phase(self, name: str) -> PhasePlan:
        """The phase called ``name``; ``KeyError`` if there is none."""
        for phase in self.phases:
            if phase.name == name:
                return phase
        raise KeyError(f"benchmark {self.name!r} has no phase {name!r}")


def _target(spec: BenchmarkSpec, phase: PhaseSpec, default: str | None,
            ray: str | None = None) -> DaskTarget | RayTarget | None:
    """Where ``phase``'s commands run (module docstring: precedence)."""
    runner: RunnerSpec | None = phase.runner if phase.runner is not None else spec.runner
    if runner is None:
        if default is not None:
            return DaskTarget(default)
        return None if ray is None else RayTarget(ray)
    if runner.ray is not None:
        return RayTarget(runner.ray, runner.attempts, runner.num_cpus, runner.num_gpus)
    return None if runner.dask is None else DaskTarget(runner.dask, runner.attempts)


def _command(spec: BenchmarkSpec, phase: PhaseSpec | None, command: CommandSpec, *, timeouts: bool,
             cleanup: bool, dask: DaskTarget | RayTarget | None = None) -> PlannedCommand:
    resolved = resolve_command(spec, phase, command)
    if cleanup:
        timeout = cleanup_timeout(command.timeout, timeouts=timeouts)
    else:
        timeout = resolved.timeout_s if timeouts else None
    cwd = None
    if command.cwd is not None:
        cwd = Path(command.cwd) if Path(command.cwd).is_absolute() else spec.base_dir / command.cwd
    return PlannedCommand(
        phase=phase.name if phase is not None else spec.name,
        name=command.name,
        run=command.run if isinstance(command.run, str) else tuple(command.run),
        timeout_s=timeout,
        grace_s=resolved.grace_s,
        on_timeout=resolved.on_timeout,
        warn=resolved.warn if timeouts else None,
        cwd=cwd,
        env=tuple(command.env.items()),
        cleanup=cleanup,
        dask=dask if isinstance(dask, DaskTarget) and not cleanup else None,
        ray=dask if isinstance(dask, RayTarget) and not cleanup else None,
    )


def _phase(spec: BenchmarkSpec, phase: PhaseSpec, *, timeouts: bool, dask: str | None,
           ray: str | None = None) -> PhasePlan:
    target = _target(spec, phase, dask, ray)
    return PhasePlan(
        name=phase.name,
        timeout_s=phase.timeout if timeouts else None,
        max_parallel=phase.max_parallel,
        commands=tuple(_command(spec, phase, command, timeouts=timeouts, cleanup=False, dask=target)
                       for command in phase.commands),
        cleanup=None if phase.cleanup is None
        else _command(spec, phase, phase.cleanup, timeouts=timeouts, cleanup=True),
        dask=target if isinstance(target, DaskTarget) else None,
        ray=target if isinstance(target, RayTarget) else None,
    )


def plan_benchmark(spec: BenchmarkSpec, *, timeouts: bool = True, dask: str | None = None,
                   ray: str | None = None) -> BenchmarkPlan:
    """Resolve every command of ``spec`` once (``timeouts`` False, or the spec's, drops every deadline;
    ``dask``: the run's Dask scheduler for phases whose spec names no runner, see ``dask_address``; ``ray``:
    the run's Ray cluster for them when no Dask scheduler is set, see ``ray_address``)."""
    timeouts = timeouts and spec.timeouts
    phases = tuple(_phase(spec, phase, timeouts=timeouts, dask=dask, ray=ray) for phase in spec.phases)
    return BenchmarkPlan(
        name=spec.name,
        source=str(spec.source),
        timeout_s=spec.timeout if timeouts else None,
        timeouts=timeouts,
        phases=phases,
        cleanup=None if spec.cleanup is None
        else _command(spec, None, spec.cleanup, timeouts=timeouts, cleanup=True),
    )
