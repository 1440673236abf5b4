"""Health, horoscopes, phone, draft, echo, JSON errors, CLI parsing and the no-gateway rule."""

from __future__ import annotations

import ast
from datetime import date, timedelta
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request
from yarl import URL

import upstream_app
from upstream_app.__main__ import parse_args
from upstream_app.horoscopes import SIGNS, daily_horoscopes, horoscope_text

AppClient = TestClient[Request, Application]

USER = {"X-User-Id": "alice"}


async def test_healthz(client: AppClient) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_daily_horoscopes_cover_all_12_signs_and_match_generator(client: AppClient) -> None:
    resp = await client.get("/api/horoscopes/daily")
    assert resp.status == 200
    body = await resp.json()
    day = date.fromisoformat(body["date"])
    assert [h["sign"] for h in body["horoscopes"]] == list(SIGNS)
    assert len(SIGNS) == 12
    assert body["horoscopes"] == daily_horoscopes(day)
    assert all(h["text"] for h in body["horoscopes"])


async def test_daily_horoscope_single_sign_is_case_insensitive(client: AppClient) -> None:
    resp = await client.get("/api/horoscopes/daily", params={"sign": "LEO"})
    assert resp.status == 200
    body = await resp.json()
    assert body["horoscopes"] == [
        {"sign": "leo", "text": horoscope_text(date.fromisoformat(body["date"]), "leo")}
    ]


@pytest.mark.parametrize("sign", ["ophiuchus", "", "leo;drop"])
async def test_daily_horoscope_unknown_sign_is_400(client: AppClient, sign: str) -> None:
    resp = await client.get("/api/horoscopes/daily", params={"sign": sign})
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "unknown_sign"
    assert body["detail"]["allowed"] == list(SIGNS)


def test_horoscope_text_is_deterministic_and_varies() -> None:
    day = date(2024, 3, 21)
    assert daily_horoscopes(day) == daily_horoscopes(day)
    texts = {horoscope_text(day, s) for s in SIGNS}
    assert len(texts) > 1, "all signs got the same text"
    week = {horoscope_text(day + timedelta(days=i), "aries") for i in range(7)}
    assert len(week) > 1, "aries got the same text every day"
    with pytest.raises(ValueError):
        horoscope_text(day, "ophiuchus")


async def test_phone_verify(client: AppClient) -> None:
    ok = await client.post("/api/phone/verify", json={"phone": "+14155550100"}, headers=USER)
    assert ok.status == 202
    assert await ok.json() == {"status": "code_sent"}
    for bad in ["14155550100", "+0123", "+1", "+1234567890123456", 14155550100, None]:
        resp = await client.post("/api/phone/verify", json={"phone": bad}, headers=USER)
        assert resp.status == 422, bad
        assert (await resp.json())["error"] == "validation_error"
    anonymous = await client.post("/api/phone/verify", json={"phone": "+14155550100"})
    assert anonymous.status == 401


async def test_assist_draft_is_deterministic_and_validated(client: AppClient) -> None:
    first = await client.post("/api/assist/draft", json={"prompt": "Will I find love?"}, headers=USER)
    second = await client.post("/api/assist/draft", json={"prompt": "Will I find love?"}, headers=USER)
    assert first.status == second.status == 200
    draft = (await first.json())["draft"]
    assert draft == (await second.json())["draft"]
    assert "Will I find love?" in draft
    longest = await client.post("/api/assist/draft", json={"prompt": "x" * 2000}, headers=USER)
    assert longest.status == 200
    for bad in ["", "   ", "x" * 2001, 42]:
        resp = await client.post("/api/assist/draft", json={"prompt": bad}, headers=USER)
        assert resp.status == 422
    extra = await client.post("/api/assist/draft", json={"prompt": "hi", "model": "gpt"}, headers=USER)
    assert extra.status == 422
    assert (await client.post("/api/assist/draft", json={"prompt": "hi"})).status == 401


async def test_echo_reflects_method_path_query_headers_and_body(client: AppClient) -> None:
    got = await client.get(URL("/api/echo?a=1&b=%20x&c=%2F", encoded=True), headers={"X-Probe": "p1"})
    assert got.status == 200
    body = await got.json()
    assert (body["method"], body["path"], body["query"]) == ("GET", "/api/echo", "a=1&b=%20x&c=%2F")
    assert body["headers"]["X-Probe"] == "p1"
    assert ["X-Probe", "p1"] in body["raw_headers"]

    posted = await client.post("/api/echo", data=b"hello", headers={"Content-Type": "text/plain"})
    body = await posted.json()
    assert (body["method"], body["body"], body["body_length"]) == ("POST", "hello", 5)


async def test_unknown_route_and_wrong_method_answer_json(client: AppClient) -> None:
    missing = await client.get("/nope")
    assert missing.status == 404
    assert (await missing.json())["error"] == "not_found"
    wrong = await client.delete("/api/orders")
    assert wrong.status == 405
    assert (await wrong.json())["error"] == "method_not_allowed"
    assert "POST" in wrong.headers["Allow"]


def test_cli_defaults_come_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_DB", "/tmp/x/db.sqlite3")
    monkeypatch.setenv("PAYMENT_PROVIDER_URL", "http://127.0.0.1:9/pay")
    args = parse_args([])
    assert (args.host, args.port, args.db, args.payment_provider_url) == (
        "127.0.0.1",
        8001,
        "/tmp/x/db.sqlite3",
        "http://127.0.0.1:9/pay",
    )
    monkeypatch.delenv("UPSTREAM_DB")
    monkeypatch.delenv("PAYMENT_PROVIDER_URL")
    args = parse_args(["--port", "9001"])
    assert args.db == "./data/upstream.sqlite3"
    assert args.payment_provider_url == "http://127.0.0.1:8000/egress/payments"
    assert args.port == 9001


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_upstream_app_never_imports_gateway() -> None:
    package_dir = Path(upstream_app.__file__).parent
    sources = sorted(package_dir.rglob("*.py"))
    assert len(sources) >= 5, "source scan found too few files to be meaningful"
    offenders = {
        str(src.relative_to(package_dir)): sorted(
            m for m in _imported_modules(src) if m.split(".")[0] == "gateway"
        )
        for src in sources
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    # Dynamic imports (importlib.import_module("gateway...")) would dodge the AST check above.
    assert not any("import_module" in src.read_text(encoding="utf-8") for src in sources)
