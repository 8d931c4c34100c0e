"""Benchmark specs: YAML -> validated, frozen pydantic models, with file:line:key errors.

Invariant: a spec that loads is runnable as written; any mistake is one ``SpecError`` naming the file, line
and key. Precedence for a command's settings (timeout, grace, on_timeout, warn): command > phase > defaults >
built-in (see ``resolve``).
"""

from grd_blocks.spec.loader import load_spec, parse_spec
from grd_blocks.spec.models import (
    NAME_PATTERN,
    BenchmarkSpec,
    CommandSpec,
    Defaults,
    OnTimeout,
    PhaseSpec,
    RunnerSpec,
    WarnSpec,
    dask_address_problem,
    ray_address_problem,
)
from grd_blocks.spec.resolve import BUILTIN_GRACE_S, BUILTIN_ON_TIMEOUT, ResolvedCommand, resolve_command

__all__ = [
    "BUILTIN_GRACE_S",
    "BUILTIN_ON_TIMEOUT",
    "NAME_PATTERN",
    "BenchmarkSpec",
    "CommandSpec",
    "Defaults",
    "OnTimeout",
    "PhaseSpec",
    "ResolvedCommand",
    "RunnerSpec",
    "WarnSpec",
    "dask_address_problem",
    "load_spec",
    "parse_spec",
    "ray_address_problem",
    "resolve_command",
]
