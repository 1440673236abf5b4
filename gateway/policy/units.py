"""Units used in policies.yaml: durations (250ms, 5s, 1h), percentages (1%), sizes (10MiB), networks."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_FACTORS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 10**6,
    "MiB": 2**20,
    "GB": 10**9,
    "GiB": 2**30,
}


def parse_duration(value: Any) -> float:
    """Seconds from '250ms', '5s', '1m', '1h', '1d'; a bare number is refused (units must be explicit)."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected a duration such as 250ms, 5s or 1h, got {value!r}")
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"bad duration {value!r} (use a number with ms, s, m, h or d)")
    seconds = float(m.group(1)) * _DURATION_FACTORS[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration, for dumps and JSON Schema defaults."""
    ms = round(seconds * 1000)
    for unit, factor in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % factor == 0:
            return f"{ms // factor}{unit}"
    return f"{ms}ms"


def parse_percent(value: Any) -> float:
    """A fraction in [0, 1] from '1%', '0.5%', '50%'."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            number = float(value.strip()[:-1])
        except ValueError:
            raise ValueError(f"bad percentage {value!r}") from None
        if not 0 <= number <= 100:
            raise ValueError(f"percentage out of range 0%..100%: {value!r}")
        return number / 100
    raise ValueError(f"expected a percentage such as 1% or 50%, got {value!r}")


def parse_size(value: Any) -> int:
    """Bytes from 10MiB, 512KiB, 1000 (plain integers are bytes)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("size must not be negative")
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_FACTORS[m.group(2)]
    raise ValueError(f"bad size {value!r} (use e.g. 10MiB, 512KiB or a byte count)")


def parse_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An IP network from '127.0.0.1/32', '::1' or '10.0.0.0/8'."""
    if not isinstance(value, str):
        raise ValueError(f"expected a network such as 127.0.0.1/32, got {value!r}")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"bad network {value!r}: {exc}") from None


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema(
        {"type": "string", "pattern": r"^\d+(\.\d+)?(ms|s|m|h|d)$", "examples": ["250ms", "5s", "1h"]}
    ),
]
Percent = Annotated[
    float,
    BeforeValidator(parse_percent),
    PlainSerializer(lambda f: f"{f * 100:g}%", return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?%$", "examples": ["1%", "50%"]}),
]
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"type": ["string", "integer"], "examples": ["10MiB", 1048576]}),
]
Network = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    BeforeValidator(parse_network),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["127.0.0.1/32", "10.0.0.0/8"]}),
]
