"""Load a benchmark spec from YAML with line-accurate errors.

Invariant: ``load_spec`` and ``parse_spec`` return a validated ``BenchmarkSpec`` or raise exactly one
``SpecError`` naming the file, the line and the key (a dotted path such as ``phases[0].commands[1].timeout``),
the problem and the fix; no exception of any other kind escapes, whatever the input (control characters, a
NUL, nesting deeper than ``MAX_DEPTH``, alias bombs, values no constructor can build, numbers too large for a
float): tests/spec/test_loader_fuzz.py feeds it thousands of mutations. The YAML is first parsed event by
event (iteratively: syntax errors and the depth limit are found there, before anything recursive runs), then
composed into a node tree, so every mapping key and list item keeps the line it started on, and a pydantic
error location maps back to the nearest line the user wrote. Environment values written as YAML numbers or
booleans keep their exact text (``SEED: 01`` is ``"01"``, not ``"1"``). ``load_spec`` reads the file each
time but parses the same text at the same place once per process (the spec is frozen, so it is shared).
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import os
import stat
import threading
import weakref
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from grd_blocks.errors import SpecError
from grd_blocks.spec.models import (
    BenchmarkSpec,
    CommandSpec,
    Defaults,
    PhaseSpec,
    RunnerSpec,
    WarnSpec,
    model_fields_at,
)
from grd_blocks.spec.plain import BAD_VALUE, plain_data, raw_key, raw_value

__all__ = ["MAX_DEPTH", "dotted", "load_spec", "parse_spec"]

Loc = tuple[str | int, ...]

_FAST_LOADER: type[yaml.SafeLoader] | None = getattr(yaml, "CSafeLoader", None)
"""libyaml's parser where PyYAML was built with it: about five times faster on a spec of thousands of
commands. Only a spec it parses without an error takes its result; anything it refuses (or cannot take, such
as lone surrogates) is parsed again by PyYAML's own parser, whose errors and limits the spec errors are made
from, so the messages do not depend on how PyYAML was built."""
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_NODES = 100_000
"""Most nodes an alias may make the composer build again (an alias bomb expands exponentially); a document
without aliases builds each node once, and its size is bounded by ``MAX_SPEC_BYTES``."""
MAX_DEPTH = 32
"""Deepest nesting of mappings and lists a spec may have (a real one needs 6: phases, commands, run)."""
_LOADER_FIELDS = {"source", "base_dir"}


def dotted(loc: Loc) -> str:
    """``("phases", 0, "timeout")`` -> ``"phases[0].timeout"``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Tree:
    """Plain Python data built from a composed YAML node tree, with the line of every key and list item."""

    def __init__(self, loader: yaml.SafeLoader, source: str) -> None:
        self.loader = loader
        self.source = source
        self.lines: dict[Loc, int] = {}
        self._count = 0  # nodes built again through an alias
        self._built: set[int] = set()

    def build(self, node: yaml.Node, loc: Loc, stack: frozenset[int]) -> Any:
        if id(node) in self._built:
            self._count += 1
        else:
            self._built.add(id(node))
        line = node.start_mark.line + 1
        if id(node) in stack:
            raise SpecError(
                "a YAML alias refers to a node that contains it (a cycle)",
                file=self.source,
                line=line,
                key=dotted(loc) or None,
                fix="copy the values instead of using the alias",
            )
        if len(loc) > MAX_DEPTH:  # through aliases: the event pass saw each alias as one node
            raise SpecError(
                f"the spec nests more than {MAX_DEPTH} levels deep (through aliases)",
                file=self.source,
                line=line,
                key=dotted(loc[:MAX_DEPTH]) or None,
                fix="write the spec out plainly",
            )
        if self._count > _MAX_NODES:
            raise SpecError(
                f"the spec expands to more than {_MAX_NODES} YAML nodes (aliases nested too deep?)",
                file=self.source,
                line=line,
                key=dotted(loc) or None,
                fix="write the spec out plainly",
            )
        inner = stack | {id(node)}
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc, inner)
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.lines[(*loc, i)] = item.start_mark.line + 1
                items.append(self.build(item, (*loc, i), inner))
            return items
        if raw_value(loc, node.tag):
            return str(node.value)  # keep exactly what the user wrote: 01, 1e-3, yes
        return self._construct(node, loc)

    def _construct(self, node: yaml.Node, loc: Loc) -> Any:
        """The Python value of a scalar node (a timestamp like 2020-02-30 or ``!!int zz`` is a SpecError)."""
        try:
            return self.loader.construct_object(node, deep=True)
        except BAD_VALUE as exc:
            tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
            if isinstance(exc, KeyError | IndexError | AttributeError):  # the constructor's own failure
                problem, fix = f"it is not a valid {tag}", f"remove the tag {tag} or quote the value"
            else:
                problem, fix = str(getattr(exc, "problem", None) or exc), "quote it"
            raise SpecError(
                f"cannot read value {_short(node.value)}: {problem}",
                file=self.source,
                line=node.start_mark.line + 1,
                key=dotted(loc) or None,
                fix=fix,
            ) from None

    def _mapping(self, node: yaml.MappingNode, loc: Loc, stack: frozenset[int]) -> dict[str, Any]:
        own_count = sum(1 for key, _ in node.value if key.tag != _MERGE_TAG)
        try:
            self.loader.flatten_mapping(node)
        except yaml.YAMLError as exc:
            raise SpecError(
                f"bad YAML merge ('<<'): {getattr(exc, 'problem', exc)}",
                file=self.source,
                line=node.start_mark.line + 1,
                key=dotted(loc) or None,
                fix="merge only mappings: <<: *anchor",
            ) from None
        merged_count = len(node.value) - own_count
        out: dict[str, Any] = {}
        own_keys: set[str] = set()
        for index, (key_node, value_node) in enumerate(node.value):
            line = key_node.start_mark.line + 1
            key: Any = None
            if isinstance(key_node, yaml.ScalarNode):
                raw = raw_key(loc, key_node.tag)
                key = str(key_node.value) if raw else self._construct(key_node, loc)
            if not isinstance(key, str):
                raise SpecError(
                    f"key {key_node.value if isinstance(key_node, yaml.ScalarNode) else '...'!r} is "
                    "not a string",
                    file=self.source,
                    line=line,
                    key=dotted(loc) or None,
                    fix="keys are names such as timeout or commands",
                )
            is_own = index >= merged_count
            if is_own and key in own_keys:
                raise SpecError(
                    f"key {key!r} appears twice in the same mapping",
                    file=self.source,
                    line=line,
                    key=dotted((*loc, key)),
                    fix="keep only one of them",
                )
            if is_own:
                own_keys.add(key)
            self.lines[(*loc, key)] = line
            out[key] = self.build(value_node, (*loc, key), stack)
        return out


def _syntax_lines(exc: yaml.MarkedYAMLError) -> tuple[int | None, int | None]:
    """The line to blame for a YAML syntax error, and the other line the parser named (if different).

    The problem mark is where the parser gave up; at the end of the file (an unclosed quote or bracket) the
    context mark, where the unclosed thing started, is the useful one.
    """
    problem = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
    context = exc.context_mark.line + 1 if exc.context_mark is not None else None
    first, second = problem, context
    if "end of stream" in str(exc.problem) and context is not None:
        first, second = context, problem
    if first is None:
        first, second = second, None
    return first, second if second != first else None


def _yaml_error(exc: yaml.YAMLError, text: str, source: str) -> SpecError:
    """The ``SpecError`` for a YAML reader, scanner or parser error."""
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML forbids: control characters, NUL
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return SpecError(
            f"character U+{code:04X} is not allowed in YAML (control characters and NUL are not)",
            file=source,
            line=text.count("\n", 0, exc.position) + 1,
            fix="remove it (inside double quotes a tab may be written as \\t)",
        )
    if isinstance(exc, yaml.MarkedYAMLError):
        line, other = _syntax_lines(exc)
        detail = ": ".join(str(p) for p in (exc.context, exc.problem) if p)
        if other is not None:
            detail += f" (see also line {other})"
        return SpecError(
            f"YAML syntax error: {detail}",
            file=source,
            line=line,
            fix="check indentation, colons and quotes on this line and the one before",
        )
    return SpecError(f"YAML syntax error: {exc}", file=source, fix="check the file is valid YAML")


def _check_events(text: str, source: str, loader: type[yaml.SafeLoader] = yaml.SafeLoader) -> None:
    """Parse ``text`` event by event (no recursion): raise its syntax error, or a ``SpecError`` where it nests
    deeper than ``MAX_DEPTH``, before the recursive composer sees it."""
    depth = 0
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise SpecError(
                    f"the spec nests more than {MAX_DEPTH} levels of mappings and lists",
                    file=source,
                    line=event.start_mark.line + 1 if event.start_mark is not None else None,
                    fix="flatten it: a spec needs about 6 levels (phases, commands, run)",
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _compose(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    if _FAST_LOADER is not None:
        try:
            return _compose_with(_FAST_LOADER, text, source)
        except (yaml.YAMLError, UnicodeError, SpecError):
            pass  # PyYAML's own parser says what is wrong (see _FAST_LOADER)
    return _compose_with(yaml.SafeLoader, text, source)


def _compose_with(kind: type[yaml.SafeLoader], text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    try:
        _check_events(text, source, kind)
        loader = kind(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, text, source) from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError as exc:
            raise _yaml_error(exc, text, source) from None
        if node is None:
            raise SpecError(
                "the spec is empty",
                file=source,
                line=1,
                fix="write a mapping with name and phases (see the Spec reference in the README)",
            )
        tree = _Tree(loader, source)
        tree.lines[()] = node.start_mark.line + 1
        data = tree.build(node, (), frozenset())
        return data, tree.lines
    finally:
        loader.dispose()


def _model_at(parent: Loc) -> type[BaseModel]:
    names = [part for part in parent if isinstance(part, str)]
    if not names:
        return BenchmarkSpec
    if names[-1] == "defaults":
        return Defaults
    if names[-1] == "phases":
        return PhaseSpec
    if names[-1] == "runner":
        return RunnerSpec
    if names[-1] == "warn":
        return WarnSpec
    return CommandSpec


def _unknown_key_fix(key: str, parent: Loc) -> str:
    valid = model_fields_at(_model_at(parent))
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{hint}valid keys here: {', '.join(valid)}"


_TYPE_FIXES = {
    "string_type": 'quote the value: "..."',
    "int_type": "write a whole number such as 2",
    "int_parsing": "write a whole number such as 2",
    "greater_than_equal": "write a number >= {ge}",
    "bool_type": "write true or false",
    "model_type": "write a mapping (key: value lines) here",
    "model_attributes_type": "write a mapping (key: value lines) here",
    "dict_type": "write a mapping (key: value lines) here",
    "list_type": "write a list (lines starting with '- ') here",
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(err: Any, loc: Loc, key_loc: Loc) -> tuple[str, str]:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    key = key_loc[-1] if key_loc else "spec"
    if kind == "grd_spec":
        return str(ctx["problem"]), str(ctx["fix"])
    if kind == "extra_forbidden":
        return f"unknown key {key!r}", _unknown_key_fix(str(key), key_loc[:-1])
    if kind == "missing":
        return f"missing required key {key!r}", f"add '{key}:' here"
    if kind == "literal_error":
        return f"{_short(err['input'])} is not a valid {key}", f"use one of {ctx.get('expected', '')}"
    fix = _TYPE_FIXES.get(kind, "see the Spec reference in the README").format(**ctx)
    return f"{_short(err['input'])} is invalid for {key}: {err['msg'][:1].lower()}{err['msg'][1:]}", fix


def _locate(loc: Loc, data: Any, lines: dict[Loc, int], missing: bool) -> tuple[Loc, int]:
    """The part of ``loc`` that exists in the user's data (plus a missing key), and its line."""
    prefix: Loc = ()
    node = data
    for part in loc:
        in_dict = isinstance(node, dict) and isinstance(part, str) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_dict or in_list:
            node = node[part]
        else:
            break
        prefix = (*prefix, part)
    line_loc = prefix
    while line_loc not in lines and line_loc:
        line_loc = line_loc[:-1]
    key_loc = prefix
    if missing and len(loc) > len(prefix) and isinstance(loc[len(prefix)], str):
        key_loc = (*prefix, loc[len(prefix)])
    return key_loc, lines.get(line_loc, 1)


def _spec_error(exc: ValidationError, data: Any, lines: dict[Loc, int], source: str) -> SpecError:
    found: list[tuple[int, int, Loc, str, str]] = []
    for order, err in enumerate(exc.errors()):
        loc: Loc = tuple(err["loc"])
        if err["type"] == "grd_spec":
            loc = (*loc, *(err.get("ctx") or {}).get("at", ()))
        key_loc, line = _locate(loc, data, lines, missing=err["type"] in {"missing", "grd_spec"})
        if err["type"] == "extra_forbidden":
            key_loc = loc  # the unknown key itself is in the data
        problem, fix = _describe(err, loc, key_loc)
        rank = 0 if err["type"] == "extra_forbidden" else 1  # a misspelt key explains the "missing" one
        found.append((line, rank * 1_000_000 + order, key_loc, problem, fix))
    found.sort(key=lambda item: (item[0], item[1]))
    line, _, key_loc, problem, fix = found[0]
    if len(found) > 1:
        fix += f" ({len(found) - 1} more problem{'s' if len(found) > 2 else ''} after this one)"
    return SpecError(problem, file=source, line=line, key=dotted(key_loc) or None, fix=fix)


def parse_spec(text: str, *, source: str = "<string>", base_dir: str | Path | None = None) -> BenchmarkSpec:
    """Validate the YAML ``text``; ``source`` names it in errors; ``base_dir`` defaults to its folder.

    A plain spec (plain.py) that validates is built from the parser's events alone; anything else, and every
    error, goes through the node tree, whose lines the error names."""
    if base_dir is None:
        base_dir = Path.cwd() if source.startswith("<") else Path(source).resolve().parent
    # plain_data is iterative and checks the depth itself: a syntax error or a document too deep is
    # NOT_PLAIN, and the composer (after its own event pass) says what is wrong
    data = plain_data(text, loader=_FAST_LOADER or yaml.SafeLoader, max_depth=MAX_DEPTH,
                      finish=_command_model)
    if isinstance(data, dict) and not _LOADER_FIELDS & data.keys():
        try:
            return BenchmarkSpec.model_validate({**data, "source": source, "base_dir": Path(base_dir)})
        except ValidationError:
            pass  # the composer's lines name where
    del data
    return _parse_composed(text, source, Path(base_dir))


def _command_model(loc: tuple[str | int, ...], value: Any) -> Any:
    """A phase's command as its model as soon as its mapping is read (``plain_data``'s ``finish``): the
    values of a 10,000-command spec and its models are then never all alive at once. A command that does
    not validate makes the document go the composer's way, whose error names its line."""
    if len(loc) == 4 and loc[0] == "phases" and loc[2] == "commands" and isinstance(value, dict):
        model = CommandSpec.model_validate(value)
        # a frozen model never changes which fields were set, and pydantic copies the set for a model_copy:
        # commands that set the same fields share one set (a set is 216 bytes: 2 MB of a 10,000-command spec)
        given = model.__pydantic_fields_set__
        object.__setattr__(model, "__pydantic_fields_set__", _FIELDS_SETS.setdefault(frozenset(given), given))
        return model
    return value


_FIELDS_SETS: dict[frozenset[str], set[str]] = {}
"""One ``__pydantic_fields_set__`` per combination of a command's fields (at most 2 ** 8 of them)."""


def _parse_composed(text: str, source: str, base_dir: Path) -> BenchmarkSpec:
    data, lines = _compose(text, source)
    if not isinstance(data, dict):
        raise SpecError(
            f"the top level is a {type(data).__name__}, not a mapping",
            file=source,
            line=lines[()],
            fix="start the file with 'name: my_benchmark' and 'phases:'",
        )
    for reserved in sorted(_LOADER_FIELDS & data.keys()):
        raise SpecError(
            f"unknown key {reserved!r} (it is set by the loader)",
            file=source,
            line=lines[(reserved,)],
            key=reserved,
            fix=_unknown_key_fix(reserved, ()),
        )
    try:
        return BenchmarkSpec.model_validate({**data, "source": source, "base_dir": base_dir})
    except ValidationError as exc:
        raise _spec_error(exc, data, lines, source) from None


MAX_SPEC_BYTES = 4 * 1024 * 1024
"""The largest spec file read (a real one is a few kB); a device such as /dev/zero is refused unread."""


def _read_bounded(file: Path) -> bytes:
    """The bytes of the regular file ``file``, at most ``MAX_SPEC_BYTES`` (opened without blocking, so a FIFO
    with no writer is refused at once instead of waiting for one)."""
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(file))
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
            raise SpecError(f"the path is {kind}, not a spec file", file=file, fix="pass a YAML file")
        with os.fdopen(os.dup(fd), "rb") as stream:
            data = stream.read(MAX_SPEC_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"the file is larger than {MAX_SPEC_BYTES // (1024 * 1024)} MiB; a spec is a few kB",
                        file=file, fix="pass the benchmark's YAML spec")
    return data


def load_spec(path: str | Path) -> BenchmarkSpec:
    """Read and validate the spec file at ``path``; relative ``cwd`` values resolve against its folder."""
    file = Path(path)
    try:
        text = _read_bounded(file).decode("utf-8")
    except FileNotFoundError:
        raise SpecError(
            "the spec file does not exist",
            file=file,
            fix=f"check the path (looked in {file.resolve().parent})",
        ) from None
    except IsADirectoryError:
        raise SpecError(
            "the path is a directory, not a spec file", file=file, fix="pass the YAML file inside it"
        ) from None
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})",
            file=file,
            fix="save it as UTF-8",
        ) from None
    except OSError as exc:
        raise SpecError(
            f"cannot read the spec file: {exc.strerror or exc}",
            file=file,
            fix="check it exists and is readable",
        ) from None
    return _parsed(text, str(file), file.resolve().parent)


_PARSED: dict[tuple[bytes, str, Path], weakref.ref[BenchmarkSpec]] = {}
_PARSED_LOCK = threading.Lock()


def _parsed(text: str, source: str, base_dir: Path) -> BenchmarkSpec:
    """A file's text is parsed once per process while its spec is in use (the CLI's preflight and the flow it
    starts read the same file): the same text at the same place gives the same (frozen) spec; changed text
    is parsed anew. The spec is held weakly, by its text's digest: once its holders let it go (a run keeps
    its plan, not its spec), a 10,000-command spec's models are freed for the run's own use."""
    key = (hashlib.sha256(text.encode()).digest(), source, base_dir)
    with _PARSED_LOCK:
        held = _PARSED.get(key)
        spec = held() if held is not None else None
    if spec is not None:
        return spec
    spec = parse_spec(text, source=source, base_dir=base_dir)
    with _PARSED_LOCK:
        for stale in [stale for stale, ref in _PARSED.items() if ref() is None]:
            del _PARSED[stale]
        _PARSED[key] = weakref.ref(spec)
    return spec
