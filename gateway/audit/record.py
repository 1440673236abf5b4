"""What an audit record is: its JSON, its id, the stream it is kept in; reading several streams as one.

A stored record is one JSON object: {"time": "2025-09-13T10:00:00.123456Z", "type": ..., "event_id": ...,
**fields}. `time` has a fixed width in UTC so comparing the strings compares the instants: range filtering
needs no parsing. `event_id` is `<writer>-<seq>`: the writing process's random id and its own counter.

Streams: most event types are rare and matter long after the fact (admin actions, policy reloads, breaker
changes). Two are as frequent as an anonymous client cares to make them: `rate_limit_hit` (one per 429) and
`auth_failed` (one per refused ops call, an `admin_action` whose action is `auth_failed`). Each of those
two is kept in a stream of its own under its own cap, so a flood of them evicts only older records of the
same kind, never the rare ones. Reads merge the streams by time.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.events import Event

Record = dict[str, Any]
PAGE = 250  # records per read page when exporting
# Events are stamped before they are queued and written a little later, and Redis stamps stream ids with
# its own clock; reads widen the coarse (file / stream id) bounds by this much, then filter on the exact time.
SLACK = 300.0
_LAST_INSTANT = 253402300799.0  # 9999-12-31T23:59:59Z

MAIN = ""  # the stream of every rare event type
RATE_LIMIT_HIT = "rate_limit_hit"
AUTH_FAILED = "auth_failed"
FLOOD_STREAMS = (RATE_LIMIT_HIT, AUTH_FAILED)
STREAMS = (MAIN, *FLOOD_STREAMS)


def iso(ts: float) -> str:
    """A Unix time as fixed-width UTC ISO 8601 with microseconds: sorts as text the way it sorts as time.

    Clamped to years 1970..9999, where the text stays fixed-width."""
    ts = min(max(ts, 0.0), _LAST_INSTANT)
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def stream_of(event: Event) -> str:
    """The stream an event is kept in: its own for the two kinds a client can cause at will, else MAIN."""
    if event.type == RATE_LIMIT_HIT:
        return RATE_LIMIT_HIT
    if event.type == "admin_action" and event.fields.get("action") == AUTH_FAILED:
        return AUTH_FAILED
    return MAIN


def encode(event: Event, event_id: str | None = None) -> bytes:
    """One event as the JSON stored for it (values JSON cannot hold are written as text)."""
    record: Record = {"time": iso(event.time), "type": event.type}
    if event_id is not None:
        record["event_id"] = event_id
    if event.instance is not None:
        record["instance"] = event.instance  # the process that saw it (gateway/fleet/instance.py)
    record.update(event.fields)
    return orjson.dumps(record, default=str, option=orjson.OPT_NON_STR_KEYS)


@dataclass(frozen=True, slots=True)
class Entry:
    """One record to store: `seq` orders a writer's records (and says which a retry already stored)."""

    seq: int
    stream: str
    line: bytes


@dataclass(frozen=True, slots=True)
class Batch:
    """Records written together. A failed write is retried with the very same batch: stores use `writer`
    and the entries' `seq` to store each record once however many attempts land."""

    writer: str
    entries: tuple[Entry, ...]

    def __len__(self) -> int:
        return len(self.entries)

    def by_stream(self) -> dict[str, list[Entry]]:
        """The entries of each stream, in order."""
        groups: dict[str, list[Entry]] = {}
        for entry in self.entries:
            groups.setdefault(entry.stream, []).append(entry)
        return groups

    @classmethod
    def of(
        cls, lines: Iterable[bytes], *, stream: str = MAIN, writer: str | None = None, first: int = 1
    ) -> Batch:
        """A batch of ready-made lines, all in one stream, by a new writer unless one is named (for tools and
        tests)."""
        writer = writer or secrets.token_hex(6)
        return cls(writer, tuple(Entry(first + i, stream, line) for i, line in enumerate(lines)))


def _time(record: Record) -> str:
    return str(record.get("time", ""))


async def merge(sources: list[AsyncIterator[list[Record]]]) -> AsyncIterator[list[Record]]:
    """Pages of records from several time-ordered sources of pages, merged by time, oldest first."""
    heads: list[deque[Record]] = [deque() for _ in sources]
    ended = [False] * len(sources)
    page: list[Record] = []
    while True:
        for i, source in enumerate(sources):
            while not heads[i] and not ended[i]:
                try:
                    heads[i].extend(await source.__anext__())
                except StopAsyncIteration:
                    ended[i] = True
        live = [head for head in heads if head]
        if not live:
            break
        page.append(min(live, key=lambda head: _time(head[0])).popleft())
        if len(page) >= PAGE:
            yield page
            page = []
    if page:
        yield page


def in_range(line: bytes, low: str, high: str, beyond: str) -> tuple[Record | None, bool]:
    """(the record if its time is within [low, high], whether it is past `beyond`); torn lines are None."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, False  # a torn line from a crash: skip it, keep the rest
    if not isinstance(record, dict):
        return None, False
    at = _time(record)
    if low <= at <= high:
        return record, False
    return None, at > beyond
