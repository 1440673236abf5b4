"""Pure logic of a reload: the diff between two policies, the redacted dump, the grace period."""

from __future__ import annotations

from gateway.policy.loader import LoadedPolicy, parse_policy
from gateway.reload import diff_policies, grace_period, policy_dump, policy_text
from gateway.runtime import build_runtime

BASE = """version: 1
upstreams:
  app: {url: "http://127.0.0.1:8001", timeout: 5s}
  old: {url: "http://127.0.0.1:8009"}
breakers:
  app: {consecutive_failures: 5}
rate_limits:
  per_ip: {rate: 50, per: 1s, key: ip}
routes:
  - {name: orders, match: "POST /api/orders", upstream: app, rate_limits: [per_ip]}
  - {name: gone, match: "GET /gone", upstream: old}
  - {name: default, match: "* /{path:.*}", upstream: app}
"""

EDITED = """version: 1
slo: {window: 10m}
upstreams:
  app: {url: "http://127.0.0.1:8001", timeout: 5s}
  new: {url: "http://127.0.0.1:8010"}
breakers:
  app: {consecutive_failures: 3}
rate_limits:
  per_ip: {rate: 50, per: 1s, key: ip}
  per_user: {rate: 10, per: 1m}
routes:
  - {name: orders, match: "POST /api/orders", upstream: app, rate_limits: [per_ip, per_user]}
  - {name: fresh, match: "GET /fresh", upstream: new}
  - {name: default, match: "* /{path:.*}", upstream: app}
"""


def test_the_diff_names_what_was_added_removed_and_changed_per_kind() -> None:
    diff = diff_policies(parse_policy(BASE), parse_policy(EDITED))
    assert diff == {
        "routes": {"added": ["fresh"], "removed": ["gone"], "changed": ["orders"]},
        "upstreams": {"added": ["new"], "removed": ["old"], "changed": []},
        "rate_limits": {"added": ["per_user"], "removed": [], "changed": []},
        "breakers": {"added": [], "removed": [], "changed": ["app"]},
        "settings": {"changed": ["slo"]},
    }


def test_an_identical_policy_has_an_empty_diff() -> None:
    diff = diff_policies(parse_policy(BASE), parse_policy(BASE))
    assert all(not names for kind in diff.values() for names in kind.values())


def test_the_dump_masks_secrets_that_urls_carry() -> None:
    text = BASE.replace(
        "version: 1\n",
        'version: 1\nstorage: {redis_url: "redis://:s3cret@127.0.0.1:6379/0"}\n'
        'alerts: {webhook_url: "https://hooks.example.com/services/T000/B000/XXXXSECRET"}\n',
    )
    policy = parse_policy(text)
    dump = policy_dump(policy)
    assert dump["storage"]["redis_url"] == "redis://:***@127.0.0.1:6379/0"
    assert dump["alerts"]["webhook_url"] == "https://hooks.example.com/***"
    assert "s3cret" not in str(dump) and "SECRET" not in str(dump)
    # The file's own text, shown beside the model by GET /api/ops/policy, is masked the same way.
    shown = policy_text(LoadedPolicy(policy=policy, source="<test>", text=text, version="x"))
    assert 'redis_url: "redis://:***@127.0.0.1:6379/0"' in shown
    assert 'webhook_url: "https://hooks.example.com/***"' in shown
    assert "s3cret" not in shown and "SECRET" not in shown


async def test_the_grace_period_outlasts_the_slowest_route_with_its_retries() -> None:
    text = BASE.replace(
        '  - {name: gone, match: "GET /gone", upstream: old}',
        '  - {name: gone, match: "GET /gone", upstream: old, timeout: 7s,'
        ' retries: {attempts: 3, backoff: 1s}}',
    )
    policy = parse_policy(text)
    runtime = build_runtime(LoadedPolicy(policy=policy, source="<test>", text=text, version="x"))
    try:
        # 3 tries of 7 s, backoffs of at most 1 s and 2 s between them, then 1 s to spare.
        assert grace_period(runtime, extra=1.0) == 7 * 3 + (1 + 2) + 1
    finally:
        for client in runtime.clients.values():
            await client.close()
        if runtime.limiter is not None:
            await runtime.limiter.close()
