"""Thin demo horoscope/tarot business service that sits behind the resilience gateway."""

__version__ = "0.1.0"
