"""A plain YAML document's values, built straight from the parser's events: no node tree, no line table.

Invariant: ``plain_data(text)`` returns exactly the values the loader's node-tree composer builds (same keys,
order and Python values, ``env`` numbers and booleans kept as written) for a *plain* document: one document of
mappings, lists and scalars with no anchor, alias, merge key or explicit tag, string keys each written once,
every scalar one of YAML's safe implicit types, nested at most ``max_depth`` deep (without aliases nothing is
built twice: the composer's limit on alias expansion has nothing to count). For anything else, or anything
the parser refuses, it returns ``NOT_PLAIN`` and the composer, whose errors name lines, has the whole say. It
holds one value per open mapping or list, so a spec of 10,000 commands never has its ~60,000 YAML nodes (and
two position marks each) alive at once: parsing it that way peaked at about 5x the memory of the spec kept.
With ``finish`` (the loader's), each completed mapping or list may be replaced as it completes: each
command's values become its model there, so the values of all commands and their models never coexist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import yaml

__all__ = ["BAD_VALUE", "NOT_PLAIN", "plain_data", "raw_key", "raw_value"]

Finish = Callable[[tuple[str | int, ...], Any], Any]

NOT_PLAIN: Final = object()
"""What ``plain_data`` returns for a document it leaves to the composer."""

_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("null", "bool", "int", "float", "str", "timestamp")}
_RAW_TAGS = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"}
# What building a YAML value may raise: PyYAML's constructors trust their tag, so an explicit tag with a
# payload it cannot take fails inside them (``!!bool maybe``: KeyError; ``!!int ''``: IndexError;
# ``!!timestamp 30s``: AttributeError).
BAD_VALUE = (yaml.YAMLError, ValueError, OverflowError, TypeError, KeyError, IndexError, AttributeError)


def raw_key(parent: tuple[str | int, ...], tag: str) -> bool:
    """A key of an ``env`` mapping that YAML reads as a number or boolean keeps its text (``ON: 1``)."""
    return parent[-1:] == ("env",) and tag in _RAW_TAGS


def raw_value(loc: tuple[str | int, ...], tag: str) -> bool:
    """A value of an ``env`` entry that YAML reads as a number or boolean keeps its text (``SEED: 01``)."""
    return len(loc) >= 2 and loc[-2] == "env" and tag in _RAW_TAGS


class _NotPlain(Exception):
    """The document has something only the composer handles."""


class _Builder:
    """Values of a plain document, built event by event with an explicit stack (no recursion)."""

    def __init__(self, max_depth: int, finish: Finish | None = None) -> None:
        self.max_depth = max_depth
        self.finish = finish
        self.constructor = yaml.SafeLoader("")  # its resolver and scalar constructors; it parses nothing
        self.stack: list[tuple[Any, tuple[str | int, ...], list[Any]]] = []  # (value, loc, [pending key])
        self.root: Any = NOT_PLAIN

    def event(self, event: yaml.Event) -> None:
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _NotPlain
        if isinstance(event, yaml.ScalarEvent):
            self._scalar(event)
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            if event.tag is not None or len(self.stack) >= self.max_depth:
                raise _NotPlain
            loc = self._value_loc()
            self.stack.append(({} if isinstance(event, yaml.MappingStartEvent) else [], loc, []))
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            value, loc, pending = self.stack.pop()
            if pending:  # a mapping cannot end between a key and its value
                raise _NotPlain
            self._attach(value if self.finish is None else self.finish(loc, value))
        elif isinstance(event, yaml.DocumentStartEvent) and self.root is not NOT_PLAIN:
            raise _NotPlain  # a second document: the composer says what is wrong

    def _value_loc(self) -> tuple[str | int, ...]:
        """Where the value that starts now goes (a mapping's key cannot be a mapping or a list)."""
        if not self.stack:
            return ()
        parent, loc, pending = self.stack[-1]
        if isinstance(parent, list):
            return (*loc, len(parent))
        if not pending:
            raise _NotPlain
        return (*loc, pending[0])

    def _scalar(self, event: yaml.ScalarEvent) -> None:
        if event.tag is not None:
            raise _NotPlain
        tag = self.constructor.resolve(yaml.ScalarNode, event.value, event.implicit)  # type: ignore[no-untyped-call]
        if tag not in _TAGS:
            raise _NotPlain
        parent = self.stack[-1] if self.stack else None
        if parent is not None and isinstance(parent[0], dict) and not parent[2]:  # a key
            key = event.value if raw_key(parent[1], tag) else self._construct(tag, event)
            if not isinstance(key, str) or key in parent[0]:
                raise _NotPlain
            parent[2].append(key)
            return
        self._attach(event.value if raw_value(self._value_loc(), tag) else self._construct(tag, event))

    def _construct(self, tag: str, event: yaml.ScalarEvent) -> Any:
        node = yaml.ScalarNode(tag, event.value, None, None, event.style)  # errors fall back: no marks needed
        try:
            return self.constructor.yaml_constructors[tag](self.constructor, node)
        except BAD_VALUE as exc:
            raise _NotPlain from exc  # the composer names the value and the line

    def _attach(self, value: Any) -> None:
        if not self.stack:
            self.root = value
            return
        parent, _, pending = self.stack[-1]
        if isinstance(parent, list):
            parent.append(value)
        else:
            parent[pending.pop()] = value


def plain_data(text: str, *, loader: type[yaml.SafeLoader], max_depth: int,
               finish: Finish | None = None) -> Any:
    """The values of ``text`` if it is a plain document (see the module docstring), else ``NOT_PLAIN``.
    ``finish(loc, value)``, if given, replaces each mapping or list as soon as it is complete (the loader
    makes each command's model as it is read, so the spec's values and its models are never all alive at
    once); a ``ValueError`` it raises makes the document ``NOT_PLAIN``."""
    builder = _Builder(max_depth, finish)
    try:
        for event in yaml.parse(text, Loader=loader):
            builder.event(event)
    except (_NotPlain, yaml.YAMLError, UnicodeError, ValueError):
        return NOT_PLAIN
    return builder.root
