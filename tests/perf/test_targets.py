"""vegeta's HTTP target format, as the built-in attacker reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from perf.targets import TargetError, format_targets, load_targets, parse_targets

REPO = Path(__file__).resolve().parents[2]


def test_targets_with_headers_bodies_and_no_blank_line_between(tmp_path: Path) -> None:
    (tmp_path / "order.json").write_bytes(b'{"service": "tarot_reading"}\n')
    text = (
        "GET http://127.0.0.1:8000/api/horoscopes/daily?sign=leo\n"
        "X-User-Id: alice\n"
        "X-Multi: one\n"
        "x-multi: two\n"
        "\n"
        "POST http://127.0.0.1:8000/api/orders\n"
        "X-User-Id: bob\n"
        "Content-Type: application/json\n"
        "@order.json\n"
        "DELETE http://127.0.0.1:8000/api/orders/1\n"
    )
    first, second, third = parse_targets(text, base_dir=tmp_path)
    assert (first.method, first.url) == ("GET", "http://127.0.0.1:8000/api/horoscopes/daily?sign=leo")
    assert first.headers == (("X-User-Id", "alice"), ("X-Multi", "one"), ("x-multi", "two"))
    assert first.body == b""
    assert (second.method, second.header("x-user-id"), second.header("content-type")) == (
        "POST", "bob", "application/json")
    assert second.body == b'{"service": "tarot_reading"}\n'
    assert second.body_path == "order.json"
    assert (third.method, third.url, third.headers) == ("DELETE", "http://127.0.0.1:8000/api/orders/1", ())


def test_a_header_value_may_contain_colons() -> None:
    (target,) = parse_targets("GET http://h/x\nAuthorization: Bearer a:b:c\n")
    assert target.headers == (("Authorization", "Bearer a:b:c"),)


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("get http://h/\n", 1, "expected 'METHOD URL'"),
        ("GET /relative\n", 1, "bad URL"),
        ("GET http://h/\nX-User-Id\n", 2, "bad header line"),
        ("GET http://h/\nX-Empty:   \n", 2, "bad header line"),
        ("\n\nPOST http://h/\n@missing.json\n", 4, "bad body file"),
    ],
)
def test_errors_name_the_line(tmp_path: Path, text: str, line: int, reason: str) -> None:
    with pytest.raises(TargetError) as caught:
        parse_targets(text, base_dir=tmp_path, source="t.http")
    assert str(caught.value).startswith(f"t.http:{line}: {reason}")


def test_an_empty_file_is_an_error() -> None:
    with pytest.raises(TargetError, match="no targets"):
        parse_targets("\n\n# only a comment\n")


def test_format_round_trips(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_bytes(b"{}")
    text = "POST http://h/a\nX-User-Id: u\n@b.json\n\nGET http://h/b\n"
    targets = parse_targets(text, base_dir=tmp_path)
    assert parse_targets(format_targets(targets), base_dir=tmp_path) == targets


@pytest.mark.parametrize("name", ["horoscopes.http", "orders.http", "orders_abuser.http", "payments.http"])
def test_the_shipped_target_files_parse(name: str) -> None:
    targets = load_targets(REPO / "perf" / "targets" / name, base_dir=REPO)
    assert targets
    for target in targets:
        assert target.url.startswith("http://127.0.0.1:8000/api/")
        assert target.header("X-User-Id")
        if target.method == "POST":
            assert target.header("Content-Type") == "application/json" and target.body
