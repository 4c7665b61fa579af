"""Seeded fault injector: decides which processor requests misbehave.

One ``random.Random`` makes every decision, in request-arrival order, so the
same seed and the same request sequence give the same fault sequence. The
decision is taken synchronously when a request arrives (before any await), so
concurrent requests cannot reorder draws behind the scenes.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable
from typing import Any

# Order matters: kinds are drawn with rng.choice over this tuple, so changing
# it changes which fault a given seed produces.
FAULT_KINDS: tuple[str, ...] = (
    "429_retry_after",
    "429_plain",
    "500",
    "502",
    "503",
    "slow",
    "drop",
    "token_expiry",
)

# Faults answered by the middleware itself, before the handler runs, so they
# never change state: kind -> (status, message, extra headers).
ERROR_FAULTS: dict[str, tuple[int, str, dict[str, str] | None]] = {
    "429_retry_after": (429, "Too Many Requests", {"Retry-After": "1"}),
    "429_plain": (429, "Too Many Requests", None),
    "500": (500, "Internal Server Error", None),
    "502": (502, "Bad Gateway", None),
    "503": (503, "Service Unavailable", None),
}

# The ``slow`` fault sleeps at least this long, so it is noticeable even when
# the base latency is zero.
SLOW_MIN_MS = 200


class FaultInjector:
    """Holds the fault configuration, the RNG and per-kind fault counters."""

    def __init__(
        self,
        fault_rate: float = 0.0,
        latency_ms: int = 0,
        seed: int | None = None,
        kinds: Iterable[str] | None = None,
    ) -> None:
        # uvicorn runs one event loop, but TestClient and the CLI may touch
        # the injector from other threads (reset while serving): a lock keeps
        # draw + count atomic.
        self._lock = threading.Lock()
        self.fault_rate = 0.0
        self.latency_ms = 0
        self.seed: int | None = None
        self.kinds: tuple[str, ...] = FAULT_KINDS
        self.counts: dict[str, int] = {}
        self._rng = random.Random()
        self.configure(fault_rate=fault_rate, latency_ms=latency_ms, seed=seed, kinds=kinds)
        self.reset()

    def configure(self, **changes: object) -> None:
        """Change any of ``fault_rate``, ``latency_ms``, ``seed``, ``kinds``.

        Only the keys given are changed. Values are validated; a bad value
        raises ``ValueError`` and leaves the configuration untouched. Changing
        the seed re-seeds the RNG immediately.
        """
        unknown = set(changes) - {"fault_rate", "latency_ms", "seed", "kinds"}
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        # Untyped JSON until checked below.
        rate: Any = self.fault_rate
        latency: Any = self.latency_ms
        seed: Any = self.seed
        kinds = self.kinds
        if "fault_rate" in changes:
            rate = changes["fault_rate"]
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
                raise ValueError("fault_rate must be a number in [0, 1]")
            rate = float(rate)
        if "latency_ms" in changes:
            latency = changes["latency_ms"]
            if isinstance(latency, bool) or not isinstance(latency, int) or latency < 0:
                raise ValueError("latency_ms must be a non-negative integer")
        if "seed" in changes:
            seed = changes["seed"]
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise ValueError("seed must be an integer or null")
        if "kinds" in changes:
            raw = changes["kinds"]
            if raw is None:
                kinds = FAULT_KINDS
            else:
                if isinstance(raw, str) or not isinstance(raw, Iterable):
                    raise ValueError("kinds must be a list of fault kinds")
                raw = list(raw)
                bad = [k for k in raw if k not in FAULT_KINDS]
                if bad or not raw:
                    raise ValueError(f"kinds must be a non-empty subset of {list(FAULT_KINDS)}")
                # Keep the canonical order so a seed means the same thing
                # regardless of how the caller ordered the list.
                kinds = tuple(k for k in FAULT_KINDS if k in raw)
        with self._lock:
            self.fault_rate, self.latency_ms, self.kinds = rate, latency, kinds
            if "seed" in changes:
                self.seed = seed
                self._rng.seed(seed)

    def reset(self) -> None:
        """Zero the counters and re-seed the RNG with the configured seed."""
        with self._lock:
            self.counts = dict.fromkeys(FAULT_KINDS, 0)
            self._rng.seed(self.seed)

    def decide(self) -> str | None:
        """Return the fault kind for the next request, or None for no fault.

        Counts the fault. With a zero rate no random number is drawn, so
        turning faults off does not advance the sequence.
        """
        if self.fault_rate <= 0.0:
            return None
        with self._lock:
            if self._rng.random() >= self.fault_rate:
                return None
            kind = self._rng.choice(self.kinds)
            self.counts[kind] += 1
            return kind

    def config(self) -> dict:
        """Return the current configuration as JSON-able dict."""
        return {
            "fault_rate": self.fault_rate,
            "latency_ms": self.latency_ms,
            "seed": self.seed,
            "kinds": list(self.kinds),
        }
