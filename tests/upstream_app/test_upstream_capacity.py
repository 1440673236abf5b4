"""The demo service's capacity knob: a fixed number of requests served at once, latency growing with the
queue (what makes the overload run real)."""

from __future__ import annotations

import asyncio
import time

import pytest
from pytest_aiohttp import AiohttpClient

from upstream_app.__main__ import parse_args
from upstream_app.app import build_app


async def test_capacity_serves_n_at_once_and_the_rest_wait_their_turn(
    aiohttp_client: AiohttpClient, db_path: str
) -> None:
    client = await aiohttp_client(build_app(db_path, "http://127.0.0.1:9", capacity=2, service_time=0.05))

    async def timed() -> float:
        started = time.perf_counter()
        response = await client.get("/api/horoscopes/daily")
        assert response.status == 200
        await response.read()
        return time.perf_counter() - started

    durations = sorted(await asyncio.gather(*(timed() for _ in range(6))))
    assert min(durations) >= 0.05
    assert durations[1] < 0.1  # the first two went in at once
    assert durations[-1] >= 0.15  # six requests through two slots: three rounds
    started = time.perf_counter()
    assert (await client.get("/healthz")).status == 200  # liveness never queues
    assert time.perf_counter() - started < 0.05


def test_the_knob_reads_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_args([]).capacity is None
    monkeypatch.setenv("UPSTREAM_CAPACITY", "8")
    monkeypatch.setenv("UPSTREAM_SERVICE_TIME", "0.02")
    args = parse_args([])
    assert (args.capacity, args.service_time) == (8, 0.02)
    assert parse_args(["--capacity", "3", "--service-time", "0.1"]).capacity == 3
    with pytest.raises(SystemExit):
        parse_args(["--capacity", "0"])
