"""What one process knows of one series, reduced to what an SLO status needs, and how several merge.

A `SeriesSnapshot` holds the latency and upstream-latency sketches over the percentile window and the counts
over each window an SLO status reads (the percentile window and the burn-rate windows). Snapshots of the same
(route, method) taken in different processes merge by addition, so fleet percentiles come from the merged
counts (within the sketch's 0.5 %), never from averaging percentiles; burn rates and error budgets come from
the added counts.

`encode`/`decode` give a compact, bounded JSON form for publishing (gateway/fleet/): a sketch keeps at most
`MAX_KEYS` keys (the lowest are folded into the next one, which only ever raises the smallest durations, as
DDSketch's collapsing store does), and the number of series is bounded by the policy's routes and methods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.slo.series import Totals
from gateway.slo.sketch import Counts, merge

MAX_KEYS = 2048  # per sketch: ~10 decades of durations at 0.5 %; a wider spread folds its fastest keys
FORMAT = 1


@dataclass(frozen=True, slots=True)
class SeriesSnapshot:
    """One (route, method) series at one moment: sketches over the percentile window, counts by window."""

    route: str
    method: str
    latency: Counts
    upstream: Counts
    totals: Mapping[str, Totals]  # by window label: "window" (the percentile window) and the burn windows


def add_totals(parts: Iterable[Totals]) -> Totals:
    """Counts of several series (or processes) over the same window, added."""
    parts = list(parts)
    width = max((len(p.exceed) for p in parts), default=1)
    exceed = [0] * width
    for p in parts:
        for i, n in enumerate(p.exceed):
            exceed[i] += n
    return Totals(
        sum(p.total for p in parts), sum(p.errors for p in parts), sum(p.throttled for p in parts),
        tuple(exceed),
    )


def merge_snapshots(groups: Iterable[Iterable[SeriesSnapshot]]) -> list[SeriesSnapshot]:
    """Snapshots of several processes, added per (route, method)."""
    by_key: dict[tuple[str, str], list[SeriesSnapshot]] = {}
    for group in groups:
        for snap in group:
            by_key.setdefault((snap.route, snap.method), []).append(snap)
    out: list[SeriesSnapshot] = []
    for (route, method), snaps in by_key.items():
        if len(snaps) == 1:
            out.append(snaps[0])
            continue
        labels = {label for s in snaps for label in s.totals}
        out.append(
            SeriesSnapshot(
                route,
                method,
                merge(s.latency for s in snaps)[0],
                merge(s.upstream for s in snaps)[0],
                {label: add_totals(s.totals[label] for s in snaps if label in s.totals) for label in labels},
            )
        )
    return out


def bounded(counts: Counts, max_keys: int = MAX_KEYS) -> Counts:
    """`counts` with at most `max_keys` keys: the lowest keys are folded into the lowest one kept."""
    if len(counts) <= max_keys:
        return counts
    keys = sorted(counts)
    cut = len(keys) - max_keys
    folded = sum(counts[k] for k in keys[: cut + 1])
    out = {k: counts[k] for k in keys[cut + 1 :]}
    out[keys[cut]] = folded
    return out


def _pairs(counts: Counts) -> list[int]:
    flat: list[int] = []
    for key, n in bounded(counts).items():
        flat.append(key)
        flat.append(n)
    return flat


def _unpairs(flat: Any) -> Counts:
    if not isinstance(flat, list) or len(flat) % 2:
        raise ValueError("a sketch is a flat list of key, count pairs")
    out: Counts = {}
    for i in range(0, min(len(flat), 2 * MAX_KEYS), 2):
        key, n = flat[i], flat[i + 1]
        if not isinstance(key, int) or not isinstance(n, int) or n < 0:
            raise ValueError("sketch keys and counts are integers")
        out[key] = out.get(key, 0) + n
    return out


def encode(snapshots: Iterable[SeriesSnapshot], **meta: Any) -> bytes:
    """The published form: {"format", **meta, "series": [...]} as JSON."""
    series = [
        {
            "r": s.route,
            "m": s.method,
            "l": _pairs(s.latency),
            "u": _pairs(s.upstream),
            "t": {label: [t.total, t.errors, t.throttled, list(t.exceed)] for label, t in s.totals.items()},
        }
        for s in snapshots
    ]
    return orjson.dumps({"format": FORMAT, **meta, "series": series})


def decode(raw: bytes | str) -> tuple[dict[str, Any], list[SeriesSnapshot]]:
    """(meta, snapshots) from `encode`'s output; ValueError when it is not that (another writer, a bug)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("series"), list):
        raise ValueError("not a published SLO snapshot")
    snapshots: list[SeriesSnapshot] = []
    for item in data.pop("series"):
        if not isinstance(item, dict) or not isinstance(item.get("r"), str) or not isinstance(
            item.get("m"), str
        ):
            raise ValueError("a series needs a route and a method")
        totals: dict[str, Totals] = {}
        raw_totals = item.get("t")
        if not isinstance(raw_totals, dict):
            raise ValueError("a series needs its totals")
        for label, value in raw_totals.items():
            if (
                not isinstance(value, list)
                or len(value) != 4
                or not all(isinstance(v, int) for v in value[:3])
                or not isinstance(value[3], list)
                or not all(isinstance(v, int) for v in value[3])
            ):
                raise ValueError(f"bad totals for window {label!r}")
            totals[str(label)] = Totals(value[0], value[1], value[2], tuple(value[3]))
        snapshots.append(
            SeriesSnapshot(item["r"], item["m"], _unpairs(item.get("l")), _unpairs(item.get("u")), totals)
        )
    return data, snapshots
