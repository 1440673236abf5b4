"""policies.yaml -> Policy. Every problem is reported as `FILE:LINE key.path: message`; nothing is half loaded."""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from gateway.policy.model import Policy

MAX_BYTES = 4 * 2**20
MAX_DEPTH = 24
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f" {self.path}:" if self.path else ""
        return f"{self.file}:{self.line}{where} {self.message}"


class PolicyError(Exception):
    """A policy that cannot be used; `problems` lists every error found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class LoadedPolicy:
    """A validated policy with where it came from: the snapshot the gateway runs."""

    policy: Policy
    source: str
    text: str
    version: str
    loaded_at: float = field(default_factory=time.time)


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Loader(yaml.SafeLoader):
    """A safe loader that refuses anchors and aliases: they add nothing to a policy and enable YAML bombs."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.MarkedYAMLError(
                None, None, "YAML anchors and aliases are not allowed in a policy", event.start_mark
            )
        return super().compose_node(parent, index)


def _expand_env(value: str) -> str:
    return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)


class _Builder:
    """Turns a composed YAML node tree into plain data, remembering each key path's line."""

    def __init__(self, loader: _Loader, source: str) -> None:
        self.loader = loader
        self.source = source
        self.lines: dict[KeyPath, int] = {}
        self.problems: list[Problem] = []

    def build(self, node: yaml.Node, path: KeyPath, depth: int = 0) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if depth > MAX_DEPTH:
            raise PolicyError([Problem(self.source, node.start_mark.line + 1, format_path(path),
                                       f"nested deeper than {MAX_DEPTH} levels")])
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                # Keys are taken as written: YAML 1.1 would read `on:` (retries.on) as True.
                key: Any = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, str):
                    self.problems.append(Problem(self.source, key_node.start_mark.line + 1, format_path(path),
                                                 f"keys must be strings, got {key!r}"))
                    continue
                child = (*path, key)
                if key in out:
                    self.problems.append(Problem(self.source, key_node.start_mark.line + 1, format_path(child),
                                                 "duplicate key"))
                    continue
                self.lines[child] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, child, depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        value = self.loader.construct_object(node)
        return _expand_env(value) if isinstance(value, str) else value


def _line_for(lines: dict[KeyPath, int], path: KeyPath) -> int:
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return 1


def _data_path(data: Any, loc: tuple[Any, ...]) -> KeyPath:
    """The part of a pydantic error location that names real keys (drops union tags and the like)."""
    path: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(node, dict) and i == len(loc) - 1 and isinstance(part, str):
            path.append(part)  # a missing or unknown key: name it
            break
        else:
            break
        path.append(part)
    return tuple(path)


def _model_at(loc: KeyPath) -> type[BaseModel] | None:
    """The model class a key path lands in, to list the keys it knows."""
    kind: Any = Policy
    for part in loc:
        while get_origin(kind) in (Union, UnionType) or str(get_origin(kind)) == "typing.Annotated":
            args = [a for a in get_args(kind) if a is not type(None)]
            kind = args[0] if args else kind
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            if not isinstance(part, str) or part not in kind.model_fields:
                return None
            kind = kind.model_fields[part].annotation
        elif get_origin(kind) in (dict, tuple, list):
            kind = get_args(kind)[-1] if get_origin(kind) is dict else get_args(kind)[0]
        else:
            return None
    while get_origin(kind) in (Union, UnionType):
        kind = next((a for a in get_args(kind) if a is not type(None)), kind)
    return kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None


def _message(error: Any) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        model = _model_at(tuple(error["loc"][:-1]))
        known = f" (known: {', '.join(model.model_fields)})" if model else ""
        return f"unknown key {error['loc'][-1]!r}{known}"
    if kind == "missing":
        return f"missing required key {error['loc'][-1]!r}"
    return re.sub(r"^(Value|Assertion) error, ", "", msg)


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Validate policy text completely; raises PolicyError listing every problem with file:line and key path."""
    if len(text.encode()) > MAX_BYTES:
        raise PolicyError([Problem(source, 1, "", f"policy file larger than {MAX_BYTES // 2**20} MiB")])
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise PolicyError([Problem(source, line, "", f"YAML error: {exc.problem or exc.context}")]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([Problem(source, 1, "", f"YAML error: {exc}")]) from None
    finally:
        loader.dispose()
    if root is None or not isinstance(root, yaml.MappingNode):
        raise PolicyError([Problem(source, 1, "", "a policy must be a YAML mapping with version, upstreams, routes")])
    builder = _Builder(loader, source)
    try:
        data = builder.build(root, ())
    except yaml.YAMLError as exc:
        raise PolicyError([Problem(source, 1, "", f"YAML error: {exc}")]) from None
    problems = list(builder.problems)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        deeper = {tuple(e["loc"][:n]) for e in errors for n in range(len(e["loc"]))}
        for error in errors:
            if error["type"] == "too_short" and tuple(error["loc"]) in deeper:
                continue  # a list whose items failed is reported by its items, not as "too short"
            path = _data_path(data, tuple(error["loc"]))
            problems.append(Problem(source, _line_for(builder.lines, path), format_path(path), _message(error)))
        raise PolicyError(problems) from None
    for path, message in policy.reference_errors():
        problems.append(Problem(source, _line_for(builder.lines, path), format_path(path), message))
    if problems:
        raise PolicyError(problems)
    return policy


def load_policy(path: str | os.PathLike[str]) -> LoadedPolicy:
    """Read and validate a policy file; raises PolicyError (never a half-valid policy)."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise PolicyError([Problem(source, 0, "", f"cannot read policy: {exc.strerror or exc}")]) from None
    if len(raw) > MAX_BYTES:
        raise PolicyError([Problem(source, 1, "", f"policy file larger than {MAX_BYTES // 2**20} MiB")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError([Problem(source, 1, "", f"policy is not UTF-8: {exc}")]) from None
    policy = parse_policy(text, source)
    return LoadedPolicy(policy=policy, source=source, text=text, version=hashlib.sha256(raw).hexdigest()[:12])
