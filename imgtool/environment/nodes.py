"""Reading an environment file's YAML nodes: typed values with the line and key of every problem.

Values are typed from their text by the caller's schema (never by YAML 1.1's implicit resolvers);
a wrong value records a Problem and raises Skip, so the rest of the file is still read and every
problem is reported at once.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imgtool.errors import ImgtoolError, InvalidArgument

_NULL = "tag:yaml.org,2002:null"
_STANDARD_TAGS = re.compile(r"tag:yaml\.org,2002:(str|int|float|bool|null|map|seq|timestamp)")


@dataclass(frozen=True)
class Problem:
    file: Path
    line: int  # 1-based
    key: str  # dotted: vms.web.cpus
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: {self.message}"


class SpecError(InvalidArgument):
    """The environment file is not valid; `problems` lists every reason, each with its line and key."""

    def __init__(self, problems: list[Problem]) -> None:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        super().__init__(f"{first}{more}", hint=f"fix {first.file} and run the command again")
        self.problems = tuple(problems)

    def __str__(self) -> str:
        return "\n".join(map(str, self.problems)) + f"\n({self.hint})"


class Skip(Exception):
    """A value was wrong; its problem is recorded, the rest of the file is still read."""


@dataclass
class Reader:
    file: Path
    problems: list[Problem] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)

    def problem(self, node: yaml.Node, key: str, message: str) -> Skip:
        self.problems.append(Problem(self.file, node.start_mark.line + 1, key, message))
        return Skip()

    def visit(self, node: yaml.Node, key: str) -> yaml.Node:
        if id(node) in self.seen:  # compose shares one node for an anchor and its aliases
            raise self.problem(node, key, "anchors and aliases (&, *) are not supported: write the value out")
        self.seen.add(id(node))
        if not _STANDARD_TAGS.fullmatch(node.tag):
            raise self.problem(node, key, f"the tag {node.tag} is not supported")
        return node

    def mapping(self, node: yaml.Node, key: str, allowed: tuple[str, ...] | None) -> Iterator[
            tuple[str, yaml.Node, yaml.Node]]:
        """(name, key node, value node) of a mapping, with unknown and repeated keys reported."""
        self.visit(node, key)
        if not isinstance(node, yaml.MappingNode):
            raise self.problem(node, key, f"must be a mapping (key: value lines), not {kind(node)}")
        names: set[str] = set()
        for key_node, value in node.value:
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            where = f"{key}.{name}" if key != "(top)" and name is not None else (name or key)
            if name is None or name == "<<":
                self.problem(key_node, key, "keys are plain names (merge keys '<<' are not supported)")
                continue
            if name in names:
                self.problem(key_node, where, "is given twice")
                continue
            names.add(name)
            if allowed is not None and name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                self.problem(key_node, where, "is not a known key" + (f" (did you mean '{close[0]}'?)" if close
                                                                       else f"; known: {', '.join(allowed)}"))
                continue
            yield name, key_node, value

    def text(self, node: yaml.Node, key: str) -> str:
        self.visit(node, key)
        if not isinstance(node, yaml.ScalarNode) or (node.tag == _NULL and node.style is None):
            raise self.problem(node, key, f"must be a text value, not {kind(node)}")
        return str(node.value)

    def integer(self, node: yaml.Node, key: str) -> int:
        value = self.text(node, key)
        if not re.fullmatch(r"[0-9]{1,9}", value):
            raise self.problem(node, key, f"must be a whole number, not '{value}'")
        return int(value)

    def flag(self, node: yaml.Node, key: str) -> bool:
        value = self.text(node, key)
        if value not in ("true", "false"):
            raise self.problem(node, key, f"must be true or false, not '{value}'")
        return value == "true"

    def texts(self, node: yaml.Node, key: str) -> list[tuple[str, yaml.Node]]:
        self.visit(node, key)
        if not isinstance(node, yaml.SequenceNode):
            raise self.problem(node, key, f"must be a list ('- item' lines, or [a, b]), not {kind(node)}")
        found: list[tuple[str, yaml.Node]] = []
        for item in node.value:
            try:
                found.append((self.text(item, key), item))
            except Skip:
                continue
        return found

    def check(self, node: yaml.Node, key: str, rule: Callable[[], Any]) -> Any:
        """rule() with its InvalidArgument / NotFound turned into this node's problem."""
        try:
            return rule()
        except ImgtoolError as exc:
            raise self.problem(node, key, exc.message + (f" ({exc.hint})" if exc.hint else "")) from None


def kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return "nothing" if node.tag == _NULL and not node.value else f"'{node.value}'"


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL and node.style is None
