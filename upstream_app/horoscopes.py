"""Deterministic daily horoscope text: same date + sign always yields the same reading."""

from __future__ import annotations

import hashlib
import random
from datetime import date

SIGNS: tuple[str, ...] = (
    "aries",
    "taurus",
    "gemini",
    "cancer",
    "leo",
    "virgo",
    "libra",
    "scorpio",
    "sagittarius",
    "capricorn",
    "aquarius",
    "pisces",
)

_OPENINGS = (
    "The stars align in your favour today.",
    "A quiet planet nudges you toward patience.",
    "Mercury hums a curious tune this morning.",
    "The moon asks you to slow down and listen.",
    "Venus smiles on small, honest gestures.",
    "Mars lends you a spark of courage.",
)
_MIDDLES = (
    "An unexpected message may change your plans.",
    "Someone close values your steady presence.",
    "A forgotten idea deserves a second look.",
    "Money matters reward careful reading of the fine print.",
    "A short walk could bring a surprisingly clear answer.",
    "Collaboration beats competition for now.",
)
_CLOSINGS = (
    "Trust the timing.",
    "Keep your promises small and keep them all.",
    "Rest is part of the plan.",
    "Say yes to the second invitation.",
    "Write the thought down before it drifts away.",
    "Let curiosity lead.",
)


def _rng_for(day: date, sign: str) -> random.Random:
    # A stable digest (not hash()) so readings survive process restarts and PYTHONHASHSEED.
    digest = hashlib.sha256(f"{day.isoformat()}:{sign}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def horoscope_text(day: date, sign: str) -> str:
    """Return the reading for ``sign`` on ``day``; ``sign`` must be one of :data:`SIGNS`."""
    if sign not in SIGNS:
        raise ValueError(f"unknown sign: {sign!r}")
    rng = _rng_for(day, sign)
    lucky = rng.randint(1, 99)
    return f"{rng.choice(_OPENINGS)} {rng.choice(_MIDDLES)} {rng.choice(_CLOSINGS)} Lucky number: {lucky}."


def daily_horoscopes(day: date, sign: str | None = None) -> list[dict[str, str]]:
    """Readings for every sign (or just ``sign``) on ``day``, in zodiac order."""
    signs = SIGNS if sign is None else (sign,)
    return [{"sign": s, "text": horoscope_text(day, s)} for s in signs]
