"""The one direction of imports (docs/design.md, "The picture"): Prefect is reached only through
``grd_blocks/prefect_edge``; the core (budget, spec, process, checkpoint, training, orchestration, report,
errors, integrations) imports neither Prefect nor anything above it; nothing in the library names ``flows``.

Read from the source with ``ast`` (imports inside functions count too), not from what happens to be loaded.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parent.parent / "grd_blocks"
EDGE = "grd_blocks.prefect_edge"
ABOVE_THE_CORE = (EDGE, "grd_blocks.cli", "flows")


def _module(path: Path) -> str:
    parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, relative ones resolved."""
    found: list[tuple[int, str]] = []
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base))
    return found


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


SOURCES = sorted(LIBRARY.rglob("*.py"))
CORE = [path for path in SOURCES
        if not _within(_module(path), EDGE) and not _module(path).startswith("grd_blocks.cli")
        and _module(path) != "grd_blocks"]


def test_the_sources_are_found() -> None:
    assert len(SOURCES) > 50 and len(CORE) > 40


@pytest.mark.parametrize("path", [p for p in SOURCES if not _within(_module(p), EDGE)],
                         ids=lambda p: str(p.relative_to(LIBRARY)))
def test_only_the_prefect_edge_imports_prefect(path: Path) -> None:
    offending = [(line, name) for line, name in _imports(path) if _within(name, "prefect")]
    assert not offending, f"{path}: imports Prefect outside {EDGE}: {offending}"


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_the_core_imports_nothing_above_it(path: Path) -> None:
    offending = [(line, name) for line, name in _imports(path)
                 if any(_within(name, above) for above in ABOVE_THE_CORE)]
    assert not offending, f"{path}: the core imports the edge or the CLI: {offending}"


def test_nothing_in_the_library_names_the_flows_package() -> None:
    named = [f"{path.relative_to(LIBRARY)}:{number}" for path in SOURCES
             for number, module in _imports(path) if _within(module, "flows")]
    named += [f"{path.relative_to(LIBRARY)}:{number}" for path in SOURCES
              for number, line in enumerate(path.read_text().splitlines(), 1)
              if "flows.benchmark" in line or "flows.train" in line or "flows/" in line]
    assert not named, named


CHECKPOINT = "grd_blocks.checkpoint"
LAYERS = {  # a layer of checkpoint/ and what else of checkpoint/ it may import
    f"{CHECKPOINT}.payload": (f"{CHECKPOINT}.payload",),
    f"{CHECKPOINT}.storage": (f"{CHECKPOINT}.payload", f"{CHECKPOINT}.storage"),
}


@pytest.mark.parametrize("path", [p for p in SOURCES if any(_within(_module(p), layer) for layer in LAYERS)],
                         ids=lambda p: str(p.relative_to(LIBRARY)))
def test_checkpoint_payload_knows_no_storage_and_storage_knows_no_run_handle(path: Path) -> None:
    layer = next(layer for layer in LAYERS if _within(_module(path), layer))
    offending = [(line, name) for line, name in _imports(path) if _within(name, CHECKPOINT)
                 and not any(_within(name, allowed) for allowed in LAYERS[layer])]
    assert not offending, f"{path}: {layer} imports above itself: {offending}"


def test_checkpoint_has_no_flat_modules_beside_its_layers_but_the_run_handle() -> None:
    flat = sorted(p.stem for p in (LIBRARY / "checkpoint").glob("*.py") if p.stem != "__init__")
    assert flat == ["async_writer", "engine", "observers", "reader", "refs", "retention", "run", "sharded"]


ORCHESTRATION = "grd_blocks.orchestration"
EDGE_MAY_USE = {  # of orchestration/: the engine's public interface, and the services the edge wires up
    f"{ORCHESTRATION}.benchmark",  # the engine: run_benchmark, its runner interface, its plan entries
    f"{ORCHESTRATION}.status",  # statuses and exit codes
    f"{ORCHESTRATION}.runkey",  # which run key a flow run resumes
    f"{ORCHESTRATION}.environment",  # the store access handed to commands
    f"{ORCHESTRATION}.progress",  # where a run's progress lives
    f"{ORCHESTRATION}.line_batches",  # a command's output lines, batched to a logger
}


@pytest.mark.parametrize("path", [p for p in SOURCES if _within(_module(p), EDGE)],
                         ids=lambda p: str(p.relative_to(LIBRARY)))
def test_the_edge_uses_the_engine_only_through_its_public_interface(path: Path) -> None:
    offending = [(line, name) for line, name in _imports(path)
                 if _within(name, ORCHESTRATION) and name != ORCHESTRATION and name not in EDGE_MAY_USE]
    assert not offending, f"{path}: reaches into the engine's internals: {offending}"


@pytest.mark.parametrize("path", [p for p in SOURCES if _within(_module(p), ORCHESTRATION)],
                         ids=lambda p: str(p.relative_to(LIBRARY)))
def test_nothing_in_orchestration_finds_its_run_or_spec_through_a_context_variable(path: Path) -> None:
    tree = ast.parse(path.read_text(), str(path))
    named = [node.lineno for node in ast.walk(tree)
             if (isinstance(node, ast.Name) and node.id == "ContextVar")
             or (isinstance(node, ast.Attribute) and node.attr == "ContextVar")]
    assert not named, f"{path}: makes or reads a ContextVar at line(s) {named}; hand the plan entry instead"


def test_the_checkpoint_store_names_no_integration_even_in_a_string() -> None:
    """Trackers reach the store through the ``grd.trackers`` entry points, not an import by name."""
    store = [path for path in SOURCES if _within(_module(path), CHECKPOINT)]
    named = [f"{path.relative_to(LIBRARY)}:{number}" for path in store
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if "grd_blocks.integrations" in line]
    assert not named, named
