"""Route matching and path normalisation (pure logic)."""

from __future__ import annotations

import pytest

from gateway.policy.model import parse_match
from gateway.routing import Router, normalize_path


def router(*specs: str) -> Router[str]:
    return Router([(parse_match(spec), spec) for spec in specs])


def test_exact_beats_pattern_and_longest_prefix_wins() -> None:
    r = router("* /{path:.*}", "* /api/{rest:.*}", "GET /api/horoscopes/daily", "* /api/orders/{id}")
    assert r.match("GET", "/api/horoscopes/daily") == "GET /api/horoscopes/daily"
    assert r.match("POST", "/api/horoscopes/daily") == "* /api/{rest:.*}"
    assert r.match("GET", "/api/orders/17") == "* /api/orders/{id}"
    assert r.match("GET", "/api/orders/17/items") == "* /api/{rest:.*}"
    assert r.match("GET", "/other") == "* /{path:.*}"


def test_method_specific_beats_any_method_and_get_answers_head() -> None:
    r = router("* /x", "GET /y", "POST|PUT /x")
    assert r.match("POST", "/x") == "POST|PUT /x"
    assert r.match("DELETE", "/x") == "* /x"
    assert r.match("HEAD", "/y") == "GET /y"
    assert r.match("POST", "/y") is None


def test_file_order_breaks_ties_between_equal_prefixes() -> None:
    r = router("GET /a/{x:[0-9]+}", "GET /a/{y}")
    assert r.match("GET", "/a/12") == "GET /a/{x:[0-9]+}"
    assert r.match("GET", "/a/b") == "GET /a/{y}"


def test_many_routes_each_found() -> None:
    specs = [f"GET /svc{i}/items/{{id}}" for i in range(2000)] + [f"POST /exact/{i}" for i in range(2000)]
    r = router(*specs)
    assert r.match("GET", "/svc1999/items/5") == "GET /svc1999/items/{id}"
    assert r.match("POST", "/exact/1234") == "POST /exact/1234"
    assert r.match("GET", "/svc1/other/5") is None


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/api/orders", "/api/orders"),
        ("/api/%6Frders", "/api/orders"),
        ("/api//orders", "/api/orders"),
        ("/api/./orders", "/api/orders"),
        ("/api/x/../orders", "/api/orders"),
        ("/api/%2forders", "/api/%2Forders"),  # an escaped slash stays a character, not a separator
        ("/a/b/..", "/a/"),
        ("/..", None),
        ("relative", None),
    ],
)
def test_normalize_path(raw: str, normal: str | None) -> None:
    assert normalize_path(raw) == normal


def test_allow_from_matches_ipv4_clients_of_a_dual_stack_listener() -> None:
    from gateway.policy.loader import parse_policy
    from gateway.runtime import compile_route

    policy = parse_policy(
        "version: 1\nupstreams: {app: {url: 'http://127.0.0.1:9'}}\n"
        "routes: [{name: e, match: 'GET /e', upstream: app, allow_from: [127.0.0.1/32]}]\n", "p.yaml"
    )
    route = compile_route(policy.routes[0], policy, {"app": None})  # type: ignore[dict-item]
    assert route.allows("127.0.0.1") and route.allows("::ffff:127.0.0.1")
    assert not route.allows("127.0.0.2") and not route.allows("::ffff:127.0.0.2") and not route.allows("::1")
    assert not route.allows("unknown")
