"""pyinstrument around one step, and where its wall time went, by the functions that matter.

The sampling profiler records the calling thread only: work handed to worker threads shows
as the time this thread waits for it (``concurrently`` for the removals' DELETEs), which is
what the wall time is made of.

Example::

    result, profile = profiled(lambda: sync_newsletter_consents(lists=["newsletter"]))
    spent = breakdown(profile.root, {"deletes": ["concurrently"], "push": ["push_batch"]})
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Profile:
    seconds: float
    root: Any  # pyinstrument.frame.Frame
    text: str


def profiled(step: Callable[[], T], interval: float = 0.001) -> tuple[T, Profile]:
    """Run `step` under pyinstrument; its result and the profile."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=interval)
    profiler.start()
    try:
        result = step()
    finally:
        profiler.stop()
    session = profiler.last_session
    text = profiler.output_text(unicode=True, color=False, show_all=False)
    return result, Profile(session.duration, session.root_frame(), text)


def inclusive(frame, functions: Iterable[str], within: str | None = None) -> float:
    """Seconds spent in calls of any of `functions` (outermost calls only, so nothing counts
    twice), optionally only below a call of `within`."""
    names = frozenset(functions)

    def walk(node, inside: bool) -> float:
        inside = inside or within is None or node.function == within
        if inside and node.function in names:
            return node.time
        return sum(walk(child, inside) for child in node.children)

    return walk(frame, False) if frame is not None else 0.0


def breakdown(root, parts: Mapping[str, tuple[Iterable[str], str | None]], total: float) -> dict[str, float]:
    """Seconds per part (functions, optionally only below `within`), and the rest.

    Parts must not overlap; the rest is everything no part names.
    """
    spent = {name: round(inclusive(root, functions, within), 3) for name, (functions, within) in parts.items()}
    spent["everything else"] = round(total - sum(spent.values()), 3)
    return spent


def write_text(profile: Profile, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(profile.text)
    return path


def excerpt(text: str, lines: int = 40) -> str:
    """The head of pyinstrument's call tree (its banner dropped)."""
    body = [line for line in text.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(body) if line.lstrip()[:1].isdigit()), 0)
    return "\n".join(body[start : start + lines])
