"""policies.yaml -> Policy. Every problem is reported as `FILE:LINE key.path: message`; nothing half loads."""

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


def _expand_env(value: str) -> str:
    return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)


_SAFE = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader
_RESOLVER = yaml.resolver.Resolver()
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_SCALAR_TAGS = {
    "tag:yaml.org,2002:int": _CONSTRUCTOR.construct_yaml_int,
    "tag:yaml.org,2002:float": _CONSTRUCTOR.construct_yaml_float,
    "tag:yaml.org,2002:bool": _CONSTRUCTOR.construct_yaml_bool,
    "tag:yaml.org,2002:null": _CONSTRUCTOR.construct_yaml_null,
}

_ALLOWED_TAGS = {
    None,
    "!",
    *_SCALAR_TAGS,
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}


class _Frame:
    __slots__ = ("container", "path", "key")

    def __init__(self, container: dict[str, Any] | list[Any], path: KeyPath) -> None:
        self.container = container
        self.path = path
        self.key: str | None = None  # a mapping frame waiting for the value of this key


class _Builder:
    """Builds plain data from the YAML event stream in one iterative pass, remembering each key path's line.

    Working on events (parsed by libyaml when present) rather than a composed node tree keeps a 1,000-route
    policy fast to load, bounds nesting without recursion, and refuses anchors, aliases and custom tags
    before anything is built: they add nothing to a policy and make YAML bombs possible.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[KeyPath, int] = {}
        self.problems: list[Problem] = []

    def _fail(self, event: Any, message: str) -> PolicyError:
        return PolicyError([Problem(self.source, event.start_mark.line + 1, "", message)])

    def _check_tag(self, event: Any) -> None:
        if event.tag not in _ALLOWED_TAGS:
            raise self._fail(event, f"YAML tags such as {event.tag!r} are not allowed in a policy")

    def _scalar(self, event: yaml.ScalarEvent) -> Any:
        self._check_tag(event)
        tag: str = event.tag or "!"
        if tag == "!" and not event.style and event.implicit[0]:  # plain: YAML 1.1 types
            tag = _RESOLVER.resolve(yaml.ScalarNode, event.value, (True, False))  # type: ignore[no-untyped-call]
        construct = _SCALAR_TAGS.get(tag)
        if construct is not None:
            try:
                return construct(yaml.ScalarNode(tag, event.value))
            except (ValueError, yaml.YAMLError):
                raise self._fail(event, f"YAML error: {event.value!r} is not a valid {tag}") from None
        return _expand_env(event.value)

    def build(self, text: str) -> Any:
        stack: list[_Frame] = []
        root: Any = None
        documents = 0
        path: KeyPath
        for event in yaml.parse(text, Loader=_SAFE):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise self._fail(event, "YAML error: YAML anchors and aliases are not allowed in a policy")
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise self._fail(event, "YAML error: a policy is one YAML document")
                continue
            if isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                stack.pop()
                continue
            if not isinstance(event, yaml.ScalarEvent | yaml.MappingStartEvent | yaml.SequenceStartEvent):
                continue
            line = event.start_mark.line + 1 if event.start_mark is not None else 1
            frame = stack[-1] if stack else None
            if isinstance(frame, _Frame) and isinstance(frame.container, dict) and frame.key is None:
                # A mapping key: taken as written (YAML 1.1 would read `on:` of retries.on as True).
                if not isinstance(event, yaml.ScalarEvent):
                    raise self._fail(event, "YAML error: keys must be plain strings")
                key = event.value
                path = (*frame.path, key)
                if key in frame.container:
                    self.problems.append(Problem(self.source, line, format_path(path), "duplicate key"))
                    key = "\0duplicate"  # parse its value, then drop it
                frame.key = key
                self.lines.setdefault(path, line)
                continue
            if frame is None:
                path = ()
            elif isinstance(frame.container, dict):
                assert frame.key is not None
                path = (*frame.path, frame.key)
            else:
                path = (*frame.path, len(frame.container))
            self.lines.setdefault(path, line)
            if isinstance(event, yaml.ScalarEvent):
                value: Any = self._scalar(event)
            else:
                self._check_tag(event)
                if len(stack) >= MAX_DEPTH:
                    raise PolicyError(
                        [
                            Problem(
                                self.source, line, format_path(path), f"nested deeper than {MAX_DEPTH} levels"
                            )
                        ]
                    )
                value = {} if isinstance(event, yaml.MappingStartEvent) else []
            if frame is None:
                root = value
            elif isinstance(frame.container, dict):
                if frame.key != "\0duplicate":
                    frame.container[frame.key] = value  # type: ignore[index]
                frame.key = None
            else:
                frame.container.append(value)
            if not isinstance(event, yaml.ScalarEvent):
                stack.append(_Frame(value, path))
        return root


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
    """Validate policy text completely; raises PolicyError listing every problem with file:line, key path."""
    if len(text.encode()) > MAX_BYTES:
        raise PolicyError([Problem(source, 1, "", f"policy file larger than {MAX_BYTES // 2**20} MiB")])
    builder = _Builder(source)
    try:
        data = builder.build(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise PolicyError([Problem(source, line, "", f"YAML error: {exc.problem or exc.context}")]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([Problem(source, 1, "", f"YAML error: {str(exc).splitlines()[0]}")]) from None
    if not isinstance(data, dict):
        raise PolicyError(
            [Problem(source, 1, "", "a policy must be a YAML mapping with version, upstreams, routes")]
        )
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
            problems.append(
                Problem(source, _line_for(builder.lines, path), format_path(path), _message(error))
            )
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
