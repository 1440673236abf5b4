"""Names vulture (`make lint`) reports as unused that something does use: frameworks call them by name, or
they are read as data. Each line names the thing and why; a name that really is dead is removed, not listed.

Not imported by anything: vulture only reads it. Decorated validators, pytest fixtures, pydantic's
model_config and the asyncio/httptools protocol callbacks are excluded in pyproject.toml ([tool.vulture]).
"""

# ruff: noqa
_ = object()

# aiohttp calls this on a web.RequestHandler subclass (gateway/server.py).
_.handle_error
# aiohttp feeds an upgraded connection's bytes to the parser set with set_parser (gateway/tunnel.py _ClientSide).
_.feed_eof
# The decorator convention (functools.wraps sets it too): inspect.signature and debuggers follow it to the
# handler an ops wrapper wraps (gateway/ops/http.py).
_.__wrapped__
# Fields of frozen dataclasses and TypedDicts, compared or read as a whole / by key.
_.link  # gateway/policy/watcher.py Fingerprint: equality decides whether the file changed
_.resolved  # same
_.local_buckets  # gateway/ratelimit/limiter.py LimiterReport, read as stats["local_buckets"]
_.body_length  # tests/support/upstream.py Seen, sent to tests as JSON
# A scenario field read through the dumped model (perf/verdict.py: expect.get("breakers_open")).
_.breakers_open
# sqlite3 reads the connection's row_factory (upstream_app/store.py).
_.row_factory
# aiohttp's TestServer calls this (tests/conftest.py GatewayTestServer).
_._make_runner
# A pytest fixture requested for its effect, not its value (tests/reload/test_heap.py).
frozen_heap
# Selenium reads it (tests/console/conftest.py: Debian's Chromium, never a downloaded one).
_.binary_location
