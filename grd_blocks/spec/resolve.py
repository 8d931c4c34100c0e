"""Which timeout, grace, on_timeout policy and pre-deadline warning a command runs with.

Invariant: precedence is command > phase > defaults > benchmark (grace only) > built-in, key by key, and
the result is always complete: ``grace_s`` and ``on_timeout`` are never None (``warn`` is None when no
level sets one). A command's ``timeout`` falls
back to ``defaults.timeout`` only: a phase's or the benchmark's ``timeout`` is that level's own budget (the
command is bounded by it through budget nesting), not a default. ``spec.timeouts`` is not applied here; the
planner drops every deadline when it is False.
"""

from __future__ import annotations

from dataclasses import dataclass

from grd_blocks.spec.models import BenchmarkSpec, CommandSpec, OnTimeout, PhaseSpec, WarnSpec

__all__ = ["BUILTIN_GRACE_S", "BUILTIN_ON_TIMEOUT", "ResolvedCommand", "resolve_command"]

BUILTIN_GRACE_S = 5.0
BUILTIN_ON_TIMEOUT: OnTimeout = "continue"


@dataclass(frozen=True)
class ResolvedCommand:
    """A command's effective settings: ``timeout_s`` None = no limit of its own."""

    timeout_s: float | None
    grace_s: float
    on_timeout: OnTimeout
    warn: WarnSpec | None = None


def resolve_command(spec: BenchmarkSpec, phase: PhaseSpec | None, command: CommandSpec) -> ResolvedCommand:
    """Apply precedence to ``command`` of ``phase`` (None for the benchmark's own cleanup) in ``spec``."""
    timeout = command.timeout if command.timeout is not None else spec.defaults.timeout
    grace = next(
        (
            g
            for g in (command.grace, phase.grace if phase else None, spec.defaults.grace, spec.grace)
            if g is not None
        ),
        BUILTIN_GRACE_S,
    )
    on_timeout = next(
        (
            p
            for p in (command.on_timeout, phase.on_timeout if phase else None, spec.defaults.on_timeout)
            if p is not None
        ),
        BUILTIN_ON_TIMEOUT,
    )
    warn = next(
        (w for w in (command.warn, phase.warn if phase else None, spec.defaults.warn) if w is not None), None
    )
    return ResolvedCommand(timeout_s=timeout, grace_s=grace, on_timeout=on_timeout, warn=warn)
