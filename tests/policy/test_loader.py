"""Policy validation: one fixture per failure mode, each naming its file, line and key path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.policy.loader import PolicyError, load_policy, parse_policy
from gateway.policy.model import Policy, Route

ROOT = Path(__file__).resolve().parents[2]
BAD = sorted((Path(__file__).parent / "bad").glob("*.yaml"))
MINIMAL = (
    'version: 1\nupstreams: {app: {url: "http://127.0.0.1:8001"}}\n'
    'routes: [{name: a, match: "GET /a", upstream: app}]\n'
)


def expected(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: ")
    return f"{path}:{first.removeprefix('# expect: ')}"


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_policy_reports_file_line_and_key_path(path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    lines = [str(p) for p in info.value.problems]
    assert any(line.startswith(expected(path)) for line in lines), lines


def test_check_command_lists_every_error_and_exits_1(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\nupstreams:\n  app: {url: 'http://127.0.0.1:1', timeout: 5x}\n"
        "routes:\n  - {name: a, match: 'GET /a', upstream: app, nope: 1}\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "check", str(policy)], capture_output=True, text=True
    )
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        f"{policy}:3 upstreams.app.timeout: bad duration '5x' (use a number with ms, s, m, h or d)",
        f"{policy}:5 routes[0].nope: unknown key 'nope' (known: {', '.join(Route.model_fields)})",
    ]


def test_check_command_accepts_the_shipped_policy() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "gateway", "check", str(ROOT / "policies.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    assert "ok" in run.stdout


def test_shipped_policy_has_the_runbook_routes_and_limits() -> None:
    policy = load_policy(ROOT / "policies.yaml").policy
    routes = {r.name: r for r in policy.routes}
    assert routes["daily_horoscopes"].slo is not None and routes["daily_horoscopes"].slo.p95 == 0.3
    assert routes["orders"].slo is not None and routes["orders"].slo.p95 == 0.5
    assert routes["payment_intent"].slo is not None and routes["payment_intent"].slo.error_rate == 0.01
    limits = policy.rate_limits
    assert (limits["rate_orders_per_hour"].rate, limits["rate_orders_per_hour"].per) == (15, 3600)
    assert (limits["rate_phone_verify_per_hour"].rate, limits["rate_phone_verify_per_hour"].per) == (3, 3600)
    assert (limits["rate_assist_draft_per_hour"].rate, limits["rate_assist_draft_per_hour"].per) == (8, 3600)
    assert policy.breakers["payment_provider"].reset_timeout == 60


def test_published_json_schema_is_generated_from_the_model() -> None:
    published = json.loads((ROOT / "config" / "policy.schema.json").read_text())
    assert published == Policy.model_json_schema(mode="validation"), "run `make schema`"


def test_env_substitution_with_default(monkeypatch: pytest.MonkeyPatch) -> None:
    text = MINIMAL + "storage: {redis_url: '${GW_TEST_REDIS:-redis://127.0.0.1:1/0}'}\n"
    monkeypatch.delenv("GW_TEST_REDIS", raising=False)
    assert parse_policy(text).storage.redis_url == "redis://127.0.0.1:1/0"
    monkeypatch.setenv("GW_TEST_REDIS", "redis://10.0.0.1:6379/2")
    assert parse_policy(text).storage.redis_url == "redis://10.0.0.1:6379/2"
    monkeypatch.setenv("GW_TEST_REDIS", "")
    assert parse_policy(MINIMAL + "storage: {redis_url: '${GW_TEST_REDIS}'}\n").storage.redis_url is None


def test_yaml_11_booleans_do_not_swallow_keys() -> None:
    text = MINIMAL.replace("upstream: app}", "upstream: app, retries: {on: [502, timeout]}}")
    assert parse_policy(text).routes[0].retries is not None
    assert parse_policy(text).routes[0].retries.on == ("502", "timeout")  # type: ignore[union-attr]


def test_oversized_and_deeply_nested_files_are_refused(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    huge.write_text(MINIMAL + "#" * (5 * 2**20))
    with pytest.raises(PolicyError, match="larger than"):
        load_policy(huge)
    with pytest.raises(PolicyError, match="nested deeper"):
        parse_policy(MINIMAL + "x: " + "[" * 100 + "]" * 100 + "\n")


def test_a_document_that_is_not_a_mapping_is_refused() -> None:
    for text in ("", "- 1\n- 2\n", "just text\n"):
        with pytest.raises(PolicyError, match="must be a YAML mapping"):
            parse_policy(text)


def test_a_bad_url_is_reported_without_its_password() -> None:
    with_password = [path for path in BAD if "s3cret" in path.read_text()]
    assert len(with_password) >= 3  # a Redis URL with a bad scheme, one with a bad port, an upstream URL
    for path in with_password:
        with pytest.raises(PolicyError) as info:
            load_policy(path)
        shown = " ".join(str(p) for p in info.value.problems)
        assert "url" in shown and "s3cret" not in shown
