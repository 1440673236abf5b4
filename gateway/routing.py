"""Request -> route. Pure; compiled once per policy so a lookup costs the same for 10 or 10,000 routes.

Order: an exact path beats a pattern; among patterns the longest literal prefix wins; ties go to file order.
Within each, a route naming the method beats `*`. A `GET` route also answers `HEAD`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Generic, TypeVar
from urllib.parse import unquote

from gateway.policy.model import Match

T = TypeVar("T")
_UNRESERVED_ESCAPE = re.compile(r"%(2[DdEe]|3[0-9]|4[1-9A-Fa-f]|5[0-9Aa]|5[Ff]|6[1-9A-Fa-f]|7[0-9Aa]|7[Ee])")
_ANY_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")


def normalize_path(path: str) -> str | None:
    """RFC 3986 normalisation so that `/api/%6Frders` or `/x/../api/orders` cannot dodge a route's limits.

    Encodes a raw backslash as `%5C`, decodes escapes of unreserved characters only (an escaped `/` stays
    escaped), upper-cases the other escapes, removes dot segments and merges repeated slashes. Returns None
    for a path that climbs above the root or is not a path at all.
    """
    if not path.startswith("/"):
        return None
    if "%" not in path and "//" not in path and "/." not in path and "\\" not in path:
        return path  # the common case: nothing to do
    if "\\" in path:
        # Not a URI character (RFC 3986), yet Windows servers and some frameworks read it as `/`: it becomes
        # the escape it should have been, and the escaped_slashes setting treats it as it treats `%5C`.
        path = path.replace("\\", "%5C")
    if "%" in path:
        path = _UNRESERVED_ESCAPE.sub(lambda m: unquote(m.group(0)), path)
        path = _ANY_ESCAPE.sub(lambda m: m.group(0).upper(), path)
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "..":
            if not out:
                return None
            out.pop()
            if last:
                out.append("")
        elif segment == ".":
            if last:
                out.append("")
        elif segment == "" and not last:
            continue
        else:
            out.append(segment)
    return "/" + "/".join(out)


@dataclass
class _Node(Generic[T]):
    children: dict[str, _Node[T]] = field(default_factory=dict)
    # (literal prefix length, file order, methods, compiled regex, target): most specific first
    candidates: list[tuple[int, int, frozenset[str] | None, re.Pattern[str], T]] = field(default_factory=list)


# Compiled patterns outlive a policy: a reload of a 1,000-route policy recompiles only what changed
# (re's own cache holds 512 patterns).
_compile = lru_cache(maxsize=65536)(re.compile)


def _with_head(methods: frozenset[str] | None) -> frozenset[str] | None:
    return methods | {"HEAD"} if methods is not None and "GET" in methods else methods


class Router(Generic[T]):
    """Maps (method, normalised path) to the first matching target, in the order described above."""

    def __init__(self, entries: Sequence[tuple[Match, T]]) -> None:
        self._exact: dict[str, list[tuple[frozenset[str] | None, T]]] = {}
        self._root: _Node[T] = _Node()
        for order, (match, target) in enumerate(entries):
            methods = _with_head(match.methods)
            if match.regex is None:
                bucket = self._exact.setdefault(match.template, [])
                bucket.append((methods, target))
                bucket.sort(key=lambda item: item[0] is None)  # stable: method-specific first
                continue
            prefix = match.literal_prefix
            node = self._root
            for segment in prefix.split("/")[
                1:-1
            ]:  # whole segments only; a partial last one stays in the regex
                node = node.children.setdefault(segment, _Node())
            node.candidates.append((len(prefix), order, methods, _compile(match.regex), target))
            node.candidates.sort(key=lambda c: (-c[0], c[2] is None, c[1]))

    def match(self, method: str, path: str) -> T | None:
        """The target for a request, or None when nothing matches."""
        bucket = self._exact.get(path)
        if bucket is not None:
            for methods, target in bucket:
                if methods is None or method in methods:
                    return target
        nodes = [self._root]
        node = self._root
        for segment in path.split("/")[1:-1]:
            child = node.children.get(segment)
            if child is None:
                break
            nodes.append(child)
            node = child
        for node in reversed(nodes):
            for _, _, methods, regex, target in node.candidates:
                if (methods is None or method in methods) and regex.fullmatch(path):
                    return target
        return None
