"""Policy files with wrong types everywhere, bombs and garbage: always a PolicyError, never a crash."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.policy.loader import PolicyError, parse_policy

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = yaml.safe_load((ROOT / "policies.yaml").read_text())

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(["5s", "1%", "GET /x", "-1ms", "0s", "999999999h", "${NOPE}", "*"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out.extend(paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.extend(paths(value, (*prefix, i)))
    return out


ALL_PATHS = paths(SHIPPED)[1:]


def replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    doc = copy.deepcopy(doc)
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return doc


def must_not_crash(text: str, budget: float = 2.0, refused: str | None = None) -> None:
    """An error, never a crash; `budget` catches blow-ups (exponential expansion, a hang), not speed.
    With `refused`, the text must be rejected with a problem containing it."""
    started = time.monotonic()
    try:
        parse_policy(text, "fuzz.yaml")
    except PolicyError as exc:
        assert exc.problems, "a PolicyError must list at least one problem"
        for problem in exc.problems:
            assert str(problem).startswith("fuzz.yaml:")
        if refused is not None:
            assert any(refused in str(problem) for problem in exc.problems), exc.problems
    else:
        assert refused is None, f"accepted a policy that must be refused ({refused})"
    assert time.monotonic() - started < budget


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ALL_PATHS), values)
def test_wrong_type_anywhere_is_an_error_not_a_crash(path: tuple[Any, ...], value: Any) -> None:
    must_not_crash(yaml.safe_dump(replace(SHIPPED, path, value)))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_is_an_error_not_a_crash(text: str) -> None:
    must_not_crash(text)


def test_billion_laughs_is_refused_quickly() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    must_not_crash("\n".join(lines), refused="anchors and aliases are not allowed")


def test_deep_nesting_and_huge_documents_are_refused_quickly() -> None:
    must_not_crash("x: " + "[" * 5000 + "]" * 5000, refused="nest")
    must_not_crash("x: " + "{a: " * 2000 + "1" + "}" * 2000, refused="nested deeper than 24 levels")
    must_not_crash("a: !!python/object:os.system x\n", refused="YAML tags")
    # 1.8 MB of routes: about 1.5 s on an idle 2-core machine; the bound only catches a blow-up.
    routes = "routes:\n" + "  - {name: r, match: 'GET /x', upstream: app}\n" * 40000
    must_not_crash(routes, budget=15.0, refused="missing required key 'version'")
