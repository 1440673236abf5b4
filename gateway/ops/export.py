"""`POST /api/ops/export` (admin only): the audit trail by time range and filter, and current state, streamed.

Request: {"entities": ["audit", "slo", "breakers", "rate_limits"], "range": {"from": ISO8601, "to"?: ISO8601},
"format"?: "json" | "ndjson" | "csv", "filter"?: {"type": "rate_limit_hit", "actor": "..."},
"group_by"?: "actor", "limit"?: N}. The body is read as JSON whatever its Content-Type (`curl -d` sends a
form type). Audit records are read from storage a page at a time and written out as they are read: a large
range never sits in memory. `group_by` answers "who hit the limits most" in one call: counts per value,
largest first.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from gateway.audit import iso
from gateway.logs import get_logger
from gateway.ops.http import GATEWAY_VIEW, GatewayView, admin_only, problem, read_json
from gateway.runtime import Runtime
from gateway.server import defer_continue

log = get_logger("gateway.ops.export")

ENTITIES = ("audit", "slo", "breakers", "rate_limits")
FORMATS = {"json": "application/json", "ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
# Event fields one may filter or group on: the contract's fields of each event type, and what admin calls add.
FIELDS = frozenset({
    "type", "actor", "route", "limit", "key", "shadow", "breaker", "from", "to", "cause", "result", "trigger",
    "version", "principal", "action", "client", "status", "method", "path",
})
CSV_COLUMNS = (
    "time", "type", "actor", "route", "limit", "key", "breaker", "from", "to", "cause", "principal", "action",
    "result", "details",
)
MAX_GROUPS = 10_000  # distinct values counted one by one; the rest are summed as "other"
MAX_FILTER_VALUES = 100
FLUSH_BYTES = 64 * 1024
Scalar = str | int | float | bool | None


class BadExport(Exception):
    """A request this endpoint cannot answer: the reason goes back as a 400."""


@dataclass(frozen=True, slots=True)
class ExportRequest:
    entities: tuple[str, ...]
    start: float
    end: float
    format: str
    filter: tuple[tuple[str, tuple[Scalar, ...]], ...]
    group_by: str | None
    limit: int | None


def parse_time(value: Any, name: str) -> float:
    """Unix seconds from ISO 8601 (`2025-09-13T00:00:00Z`, offsets, or a date); no zone means UTC."""
    if not isinstance(value, str):
        raise BadExport(f"range.{name} must be an ISO 8601 string such as 2025-09-13T00:00:00Z")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadExport(f"range.{name} is not ISO 8601: {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def parse_request(body: Any, now: float) -> ExportRequest:
    """Validate an export request body; BadExport says what is wrong."""
    if not isinstance(body, dict):
        raise BadExport("the body must be a JSON object such as "
                        '{"entities": ["audit"], "range": {"from": "2025-09-13T00:00:00Z"}}')
    unknown = sorted(set(body) - {"entities", "range", "format", "filter", "group_by", "limit"})
    if unknown:
        raise BadExport(f"unknown field {unknown[0]!r}"
                        " (known: entities, range, format, filter, group_by, limit)")
    entities = body.get("entities", ["audit"])
    if isinstance(entities, str):
        entities = [entities]
    if not isinstance(entities, list) or not entities or not all(isinstance(e, str) for e in entities):
        raise BadExport(f"entities must be a non-empty list of: {', '.join(ENTITIES)}")
    for entity in entities:
        if entity not in ENTITIES:
            raise BadExport(f"unknown entity {entity!r} (known: {', '.join(ENTITIES)})")
    if len(set(entities)) != len(entities):
        raise BadExport("an entity is listed twice")
    fmt = body.get("format", "json")
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise BadExport(f"format must be one of: {', '.join(FORMATS)}")
    if fmt == "csv" and len(entities) != 1:
        raise BadExport("csv holds one entity per export: ask for each entity separately")
    start, end = 0.0, now
    window = body.get("range")
    if "audit" in entities:
        if not isinstance(window, dict) or "from" not in window:
            raise BadExport('the audit needs a range: {"range": {"from": "2025-09-13T00:00:00Z"}}')
        extra = sorted(set(window) - {"from", "to"})
        if extra:
            raise BadExport(f"unknown range field {extra[0]!r} (known: from, to)")
        start = parse_time(window["from"], "from")
        end = parse_time(window["to"], "to") if window.get("to") is not None else now
        if start > end:
            raise BadExport("range.from is after range.to")
    elif window is not None and not isinstance(window, dict):
        raise BadExport("range must be an object with from and to")
    raw_filter = body.get("filter")
    raw_filter = {} if raw_filter is None else raw_filter
    if not isinstance(raw_filter, dict):
        raise BadExport('filter must be an object such as {"type": "rate_limit_hit", "actor": "u1"}')
    filters: list[tuple[str, tuple[Scalar, ...]]] = []
    for name, value in raw_filter.items():
        if name not in FIELDS:
            raise BadExport(f"cannot filter on {name!r} (known: {', '.join(sorted(FIELDS))})")
        values = value if isinstance(value, list) else [value]
        if not values or len(values) > MAX_FILTER_VALUES or not all(_scalar(v) for v in values):
            raise BadExport(f"filter.{name} must be a value or a list of 1..{MAX_FILTER_VALUES} values")
        filters.append((name, tuple(values)))
    group_by = body.get("group_by")
    if group_by is not None and (not isinstance(group_by, str) or group_by not in FIELDS):
        raise BadExport(f"cannot group by {group_by!r} (known: {', '.join(sorted(FIELDS))})")
    if group_by is not None and "audit" not in entities:
        raise BadExport("group_by applies to the audit entity")
    limit = body.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise BadExport("limit must be a positive integer")
    return ExportRequest(tuple(entities), start, end, fmt, tuple(filters), group_by, limit)


def _equal(a: Any, b: Scalar) -> bool:
    # True == 1 in Python; a filter on `shadow: true` must not match a status of 1 (but 200 matches 200.0).
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


def matches(record: dict[str, Any], filters: Iterable[tuple[str, tuple[Scalar, ...]]]) -> bool:
    """Whether a record has, for every filtered field, one of the accepted values."""
    for name, accepted in filters:
        value = record.get(name)
        if not any(_equal(value, a) for a in accepted):
            return False
    return True


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    # A cell starting with = + - @ is a formula to a spreadsheet: actor ids come from clients.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


class Out:
    """Buffers small writes into chunks of about FLUSH_BYTES for the chunked response."""

    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response
        self._parts: list[bytes] = []
        self._size = 0

    async def write(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        if self._parts:
            await self._response.write(b"".join(self._parts))
            self._parts, self._size = [], 0


class CsvOut:
    """CSV rows (RFC 4180 line ends, formula-safe cells) written through an `Out`."""

    def __init__(self, out: Out) -> None:
        self._out = out
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\r\n")

    async def row(self, cells: Iterable[Any]) -> None:
        self._writer.writerow([_cell(v) for v in cells])
        if self._buffer.tell() >= FLUSH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        await self._out.write(self._buffer.getvalue().encode())
        self._buffer.seek(0)
        self._buffer.truncate()


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)


def state_rows(entity: str, runtime: Runtime | None) -> list[dict[str, Any]]:
    """Current values of a state entity (breakers, slo, rate_limits) as rows."""
    if runtime is None:
        return []
    if entity == "breakers":
        return list(runtime.breaker_snapshots().values())
    if entity == "slo":
        return [{"route": name, **value} for name, value in runtime.slo.status().items()]
    return [{"name": name, **row} for name, row in runtime.limiter.describe().items()]


class Export:
    """One export: writes each entity in the chosen format as it is read."""

    def __init__(self, spec: ExportRequest, gateway: GatewayView, out: Out) -> None:
        self.spec = spec
        self.gateway = gateway
        self.out = out

    async def records(self) -> AsyncIterator[dict[str, Any]]:
        """Matching audit records, oldest first, a page at a time, at most `limit`."""
        audit = self.gateway.audit
        if audit is None:
            return
        left = self.spec.limit
        async for page in audit.store.scan(self.spec.start, self.spec.end):
            for record in page:
                if matches(record, self.spec.filter):
                    yield record
                    if left is not None:
                        left -= 1
                        if left == 0:
                            return

    async def groups(self) -> tuple[list[dict[str, Any]], int, bool]:
        """(counts per value of group_by, largest first; records matched; whether values were lumped)."""
        key = self.spec.group_by
        assert key is not None
        counts: dict[Any, list[Any]] = {}
        other, matched = 0, 0
        async for record in self.records():
            matched += 1
            value = record.get(key)
            value = value if _scalar(value) else _dumps(value).decode()
            entry = counts.get(value)
            if entry is not None:
                entry[0] += 1
                entry[2] = record["time"]
            elif len(counts) < MAX_GROUPS:
                counts[value] = [1, record["time"], record["time"]]
            else:
                other += 1
        rows = [{key: value, "count": c, "first": first, "last": last}
                for value, (c, first, last) in sorted(counts.items(), key=lambda kv: -kv[1][0])]
        return rows, matched, other > 0

    async def run(self) -> None:
        writer = {"json": self._json, "ndjson": self._ndjson, "csv": self._csv}[self.spec.format]
        await writer()
        await self.out.flush()

    def _head(self) -> dict[str, Any]:
        head: dict[str, Any] = {"generated_at": iso(time.time()), "entities": list(self.spec.entities)}
        if "audit" in self.spec.entities:
            head["range"] = {"from": iso(self.spec.start), "to": iso(self.spec.end)}
            head["filter"] = {name: list(values) for name, values in self.spec.filter}
        return head

    async def _json(self) -> None:
        out = self.out
        await out.write(_dumps(self._head())[:-1])
        for entity in self.spec.entities:
            if entity != "audit":
                rows = state_rows(entity, self.gateway.runtime)
                await out.write(b',"' + entity.encode() + b'":' + _dumps(rows))
            elif self.spec.group_by is not None:
                groups, matched, truncated = await self.groups()
                await out.write(b',"audit":' + _dumps({"group_by": self.spec.group_by, "groups": groups,
                                                        "matched": matched, "truncated": truncated}))
            else:
                await out.write(b',"audit":[')
                count = 0
                async for record in self.records():
                    await out.write((b"," if count else b"") + _dumps(record))
                    count += 1
                await out.write(b'],"audit_count":' + str(count).encode())
        await out.write(b"}\n")

    async def _ndjson(self) -> None:
        out = self.out
        for entity in self.spec.entities:
            tag = {"entity": entity}
            if entity != "audit":
                for row in state_rows(entity, self.gateway.runtime):
                    await out.write(_dumps({**tag, **row}) + b"\n")
            elif self.spec.group_by is not None:
                rows, _, _ = await self.groups()
                for row in rows:
                    await out.write(_dumps({**tag, "group_by": self.spec.group_by, **row}) + b"\n")
            else:
                async for record in self.records():
                    await out.write(_dumps({**tag, **record}) + b"\n")

    async def _csv(self) -> None:
        out = CsvOut(self.out)
        entity = self.spec.entities[0]
        if entity == "audit" and self.spec.group_by is not None:
            groups, _, _ = await self.groups()
            await out.row((self.spec.group_by, "count", "first", "last"))
            for group in groups:
                await out.row(group.values())
        elif entity == "audit":
            await out.row(CSV_COLUMNS)
            known = {*CSV_COLUMNS, "id", "event_id"}  # addresses (stream id, event id), not event fields
            async for record in self.records():
                details = {k: v for k, v in record.items() if k not in known}
                await out.row([record.get(c) for c in CSV_COLUMNS[:-1]] + [details or None])
        else:
            rows = state_rows(entity, self.gateway.runtime)
            columns: dict[str, None] = {}
            for row in rows:
                columns.update(dict.fromkeys(row))
            await out.row(columns)
            for row in rows:
                await out.row(row.get(c) for c in columns)
        await out.flush()


@admin_only
async def export(request: web.Request) -> web.StreamResponse:
    """POST /api/ops/export: 400 with the reason for a bad request, else the export streamed (chunked)."""
    body = await read_json(request, max_bytes=64 * 1024)
    try:
        spec = parse_request(body, time.time())
    except BadExport as exc:
        return problem(400, "bad_export", str(exc))
    gateway = request.app[GATEWAY_VIEW]
    audit = gateway.audit
    if "audit" in spec.entities and audit is not None:
        # An export that may be missing events must say so: 503 with the reason, never a short 200.
        reason = await audit.problem()
        if reason is not None:
            return problem(503, "audit_unavailable", f"the audit trail is not recording: {reason}")
        if not await audit.store.ping():
            return problem(503, "audit_unavailable",
                           f"the audit store ({audit.store.kind}) cannot be read now")
        if not await audit.flush(within=2.0):  # what was emitted before this call is in the answer
            reason = await audit.problem() or f"{audit.queued} events are still waiting to be written"
            return problem(503, "audit_unavailable", f"the audit trail is incomplete: {reason}")
    response = web.StreamResponse(headers={"Content-Type": FORMATS[spec.format], "Cache-Control": "no-store"})
    if spec.format == "csv":
        response.headers["Content-Disposition"] = f'attachment; filename="{spec.entities[0]}.csv"'
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        await Export(spec, gateway, Out(response)).run()
    except Exception as exc:
        # The head is sent: the only honest signal left is a cut connection (no terminating chunk), which
        # every HTTP client reports as an incomplete body rather than a short, valid-looking export.
        log.error("export_aborted", error=repr(exc))
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


def add_routes(app: web.Application) -> None:
    """Register POST /api/ops/export (admin only)."""
    app.router.add_post("/api/ops/export", export, expect_handler=defer_continue)
