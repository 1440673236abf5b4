"""The results writer speaks vegeta's `encode -to json` format, field by field (lib/results_json.go)."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime

import pytest

from perf.results import (
    Result,
    ResultsError,
    ResultsWriter,
    canonical_header,
    decode,
    format_timestamp,
    parse_timestamp,
)

# vegeta's Result JSON, in the order its encoder writes the keys.
VEGETA_FIELDS = ["attack", "seq", "code", "timestamp", "latency", "bytes_out", "bytes_in", "error", "body",
                 "method", "url", "headers"]


def unix_ns(year: int, month: int, day: int, hour: int, minute: int, second: int, frac_ns: int) -> int:
    whole = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    return int(whole.timestamp()) * 1_000_000_000 + frac_ns


def sample() -> Result:
    return Result(
        attack="orders", seq=41, code=429, timestamp=unix_ns(2025, 9, 13, 10, 20, 30, 123_456_789),
        latency=2_500_000, bytes_out=66, bytes_in=58, error="429 Too Many Requests",
        body=b'{"error": "rate_limited"}', method="POST", url="http://127.0.0.1:8000/api/orders",
        headers={"Retry-After": ["12"], "Set-Cookie": ["a=1", "b=2"]},
    )


def test_a_line_has_vegetas_fields_in_vegetas_order_with_vegetas_types() -> None:
    out = io.BytesIO()
    writer = ResultsWriter(out)
    writer.write(sample())
    raw = out.getvalue()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    pairs = json.loads(raw, object_pairs_hook=lambda items: items)
    assert [key for key, _ in pairs] == VEGETA_FIELDS
    data = dict(pairs)
    for key in ("seq", "code", "latency", "bytes_out", "bytes_in"):
        assert type(data[key]) is int, key
    for key in ("attack", "timestamp", "error", "body", "method", "url"):
        assert type(data[key]) is str, key
    assert data["timestamp"] == "2025-09-13T10:20:30.123456789Z"
    assert data["latency"] == 2_500_000  # nanoseconds, like Go's time.Duration
    assert base64.b64decode(data["body"]) == b'{"error": "rate_limited"}'
    assert dict(data["headers"]) == {"Retry-After": ["12"], "Set-Cookie": ["a=1", "b=2"]}
    assert writer.written == 1


def test_empty_error_and_body_are_empty_strings_and_headers_an_empty_object() -> None:
    result = Result(attack="", seq=0, code=200, timestamp=unix_ns(2025, 1, 2, 3, 4, 5, 0), latency=1)
    data = json.loads(encoded_line(result))
    assert (data["error"], data["body"], data["headers"], data["attack"]) == ("", "", {}, "")


def encoded_line(result: Result) -> bytes:
    out = io.BytesIO()
    ResultsWriter(out).write(result)
    return out.getvalue()


@pytest.mark.parametrize(
    ("frac_ns", "text"),
    [
        (0, "2025-01-02T03:04:05Z"),  # Go's RFC3339Nano drops an all-zero fraction...
        (120_000_000, "2025-01-02T03:04:05.12Z"),  # ...and trailing zeros
        (1, "2025-01-02T03:04:05.000000001Z"),
        (999_999_999, "2025-01-02T03:04:05.999999999Z"),
    ],
)
def test_timestamps_are_rfc3339_nano(frac_ns: int, text: str) -> None:
    ns = unix_ns(2025, 1, 2, 3, 4, 5, frac_ns)
    assert format_timestamp(ns) == text
    assert parse_timestamp(text) == ns


def test_vegeta_timestamps_with_an_offset_and_short_fractions_are_read() -> None:
    assert parse_timestamp("2025-01-02T05:04:05.5+02:00") == unix_ns(2025, 1, 2, 3, 4, 5, 500_000_000)
    assert parse_timestamp("2025-01-01T23:04:05-04:00") == unix_ns(2025, 1, 2, 3, 4, 5, 0)
    with pytest.raises(ValueError):
        parse_timestamp("2025-01-02 03:04:05")


def test_decode_reads_back_what_was_written_and_ignores_unknown_fields() -> None:
    line = encoded_line(sample())
    assert decode(line) == sample()
    data = json.loads(line)
    data["extra"] = {"from": "a newer vegeta"}
    data["headers"] = {"retry-after": ["3"]}
    decoded = decode(json.dumps(data))
    assert decoded.header("Retry-After") == "3"


@pytest.mark.parametrize(
    "line",
    ['{"code": "200", "timestamp": "2025-01-02T03:04:05Z"}', '{"timestamp": "yesterday"}', "[1, 2]", "{oops",
     '{"timestamp": "2025-01-02T03:04:05Z", "body": "***"}'],
)
def test_bad_lines_are_errors_naming_the_line(line: str) -> None:
    with pytest.raises(ResultsError, match="line 7"):
        decode(line, 7)


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("x-user-id", "X-User-Id"), ("RETRY-AFTER", "Retry-After"), ("content-type", "Content-Type"),
     ("etag", "Etag"), ("bad name", "bad name")],
)
def test_header_names_take_gos_canonical_form(name: str, canonical: str) -> None:
    assert canonical_header(name) == canonical
