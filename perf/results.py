"""vegeta's results as JSON lines (`vegeta encode --to json`, lib/results_json.go), read and written.

One object per line, fields in vegeta's order: attack (str), seq (int), code (int), timestamp (RFC 3339
with nanoseconds, trailing zeros trimmed as Go's time.RFC3339Nano does), latency (int ns), bytes_out (int),
bytes_in (int), error (str, "" when none), body (base64 str), method (str), url (str), headers (object of
name -> list of str, names in Go's canonical form). `vegeta report` and `vegeta plot` read what
`ResultsWriter` writes, and the verdict reads what `vegeta encode` writes.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

FIELDS = (
    "attack",
    "seq",
    "code",
    "timestamp",
    "latency",
    "bytes_out",
    "bytes_in",
    "error",
    "body",
    "method",
    "url",
    "headers",
)
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ResultsError(ValueError):
    """A results line that is not vegeta's JSON; the message names the line."""


@dataclass(slots=True)
class Result:
    """One request's outcome, the fields of vegeta's `Result`. Times are integers in nanoseconds."""

    attack: str
    seq: int
    code: int
    timestamp: int  # Unix ns: when the request was due (the built-in attacker) or sent (vegeta)
    latency: int  # ns
    bytes_out: int = 0
    bytes_in: int = 0
    error: str = ""
    body: bytes = b""
    method: str = ""
    url: str = ""
    headers: dict[str, list[str]] = field(default_factory=dict)

    @property
    def end(self) -> int:
        """Unix ns at which the response was complete."""
        return self.timestamp + self.latency

    def header(self, name: str) -> str | None:
        """The first value of a response header, or None."""
        values = self.headers.get(canonical_header(name))
        return values[0] if values else None


def canonical_header(name: str) -> str:
    """Go's textproto.CanonicalMIMEHeaderKey: `x-user-id` -> `X-User-Id` (odd names stay as they are)."""
    if not name or any(c == " " or not (c.isascii() and c.isprintable()) for c in name):
        return name
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def format_timestamp(ns: int) -> str:
    """Unix ns -> RFC 3339 in UTC, up to 9 fractional digits, trailing zeros trimmed (Go's RFC3339Nano)."""
    seconds, frac = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def parse_timestamp(text: str) -> int:
    """RFC 3339 (any offset, up to 9 fractional digits) -> Unix ns. Raises ValueError."""
    m = _RFC3339.match(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    whole = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    ns = int((whole - _EPOCH).total_seconds()) * 1_000_000_000
    if m.group(7):
        ns += int(m.group(7).ljust(9, "0"))
    if m.group(9):
        offset = (int(m.group(10)) * 60 + int(m.group(11))) * 60 * 1_000_000_000
        ns += -offset if m.group(9) == "+" else offset
    return ns


def encode(result: Result) -> bytes:
    """One JSON line (with its newline), fields in vegeta's order."""
    return (
        orjson.dumps(
            {
                "attack": result.attack,
                "seq": result.seq,
                "code": result.code,
                "timestamp": format_timestamp(result.timestamp),
                "latency": result.latency,
                "bytes_out": result.bytes_out,
                "bytes_in": result.bytes_in,
                "error": result.error,
                "body": base64.b64encode(result.body).decode("ascii"),
                "method": result.method,
                "url": result.url,
                "headers": result.headers,
            }
        )
        + b"\n"
    )


def _int(data: dict[str, Any], key: str, line: int) -> int:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 and key != "latency":
        raise ResultsError(f"line {line}: {key} must be a non-negative integer, got {value!r}")
    return value


def decode(line: bytes | str, line_no: int = 0) -> Result:
    """Parse one JSON line as vegeta writes it (unknown fields ignored, as vegeta's decoder does)."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ResultsError(f"line {line_no}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ResultsError(f"line {line_no}: a result must be a JSON object")
    try:
        timestamp = parse_timestamp(str(data.get("timestamp", "")))
    except ValueError as exc:
        raise ResultsError(f"line {line_no}: {exc}") from None
    raw_headers = data.get("headers") or {}
    if not isinstance(raw_headers, dict):
        raise ResultsError(f"line {line_no}: headers must be an object")
    headers = {
        canonical_header(str(k)): [str(v) for v in (vs if isinstance(vs, list) else [vs])]
        for k, vs in raw_headers.items()
    }
    try:
        body = base64.b64decode(data.get("body") or "", validate=True)
    except ValueError:
        raise ResultsError(f"line {line_no}: body is not base64") from None
    return Result(
        attack=str(data.get("attack", "")),
        seq=_int(data, "seq", line_no),
        code=_int(data, "code", line_no),
        timestamp=timestamp,
        latency=_int(data, "latency", line_no),
        bytes_out=_int(data, "bytes_out", line_no),
        bytes_in=_int(data, "bytes_in", line_no),
        error=str(data.get("error") or ""),
        body=body,
        method=str(data.get("method", "")),
        url=str(data.get("url", "")),
        headers=headers,
    )


def read_results(path: Path | str) -> Iterator[Result]:
    """Every result of a JSON-lines file (blank lines skipped)."""
    with open(path, "rb") as fp:
        for line_no, line in enumerate(fp, 1):
            if line.strip():
                yield decode(line, line_no)


class ResultsWriter:
    """Appends results to a binary stream as JSON lines; `written` counts them."""

    def __init__(self, fp: IO[bytes]) -> None:
        self._fp = fp
        self.written = 0

    def write(self, result: Result) -> None:
        """Encode and write one result."""
        self._fp.write(encode(result))
        self.written += 1

    def write_all(self, results: Iterable[Result]) -> None:
        """Encode and write several results."""
        for result in results:
            self.write(result)

    def flush(self) -> None:
        self._fp.flush()
