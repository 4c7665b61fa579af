"""Python's cycle collector, kept out of the bulk steps.

A process that runs our flows holds some 300,000 objects it loaded (Prefect, SQLAlchemy,
pydantic, FastAPI, the project's modules); a full collection walks all of them (0.2 s on
this machine). A bulk step's hundreds of thousands of short-lived objects start a
collection every few hundred allocations, and now and then a full one.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cycle collector for one bulk step (a chunk of intake, a push batch),
    then resume it if it was running. Process-wide while it lasts.

    A step's parsed events, rows, tuples and dicts are nearly all freed by their reference
    count; the collector, started every 700 allocations, walked them again and again, and
    now and then the whole heap: a quarter of a push's CPU time, 15% of an intake's. What
    cycles a step leaves are bounded by the step and collected once the collector runs
    again.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
