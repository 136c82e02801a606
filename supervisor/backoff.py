"""Capped exponential backoff with jitter for workers that fail soon after they start."""

from __future__ import annotations

import random

BASE = 0.25  # seconds before the first retry
CAP = 30.0  # never wait longer than this between attempts
JITTER = 0.2  # +/- this fraction, so that many failing workers do not retry in lockstep
_MAX_DOUBLINGS = 64  # far past CAP already; 2.0 ** 1024 overflows after ~8.5 hours of failures


def delay(failures: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before the next attempt after `failures` consecutive quick failures."""
    if failures <= 0:
        return 0.0
    nominal = min(CAP, BASE * 2.0 ** min(failures - 1, _MAX_DOUBLINGS))
    spread: float = (rng or random).uniform(-JITTER, JITTER)
    return min(CAP, nominal * (1 + spread))
