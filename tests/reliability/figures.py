"""Figures of the reliability suite, printed as one table at the end of the test session.

Any reliability test records what it measured; the figures of every process (pytest-xdist
workers included) are added up and printed once, by the process that owns the terminal::

    from reliability.figures import record

    record("hostile lines rejected", 412)          # counts add up across tests and workers
    record("p95 intake latency (ms)", 8.5, "max")  # or keep the largest / smallest / last

Workers cannot write to the controller's terminal, so every process appends its figures as
JSON lines to a file of its own in one directory; the controller creates that directory,
hands it to the workers (``workerinput``) and reads it back in ``pytest_terminal_summary``.
``tests/conftest.py`` loads this module as a plugin (``pytest_plugins``), in the controller
and in every worker.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

COMBINE = {"sum": sum, "max": max, "min": min, "last": lambda values: values[-1]}
_WORKER_KEY = "psync_figures_dir"
_directory: Path | None = None


def record(name: str, value: float | int | str, combine: str = "sum") -> None:
    """Record a figure; several records of one name are combined by `combine` (sum, max, min, last).

    Outside a pytest session with this plugin loaded the figure is dropped, not an error.
    """
    if combine not in COMBINE:
        raise ValueError(f"combine is one of {sorted(COMBINE)}, not {combine!r}")
    if _directory is None:
        return
    entry = json.dumps({"name": name, "value": value, "combine": combine})
    with open(_directory / f"{os.getpid()}.jsonl", "a", encoding="utf-8") as out:
        out.write(entry + "\n")


def collected(directory: Path) -> dict[str, float | int | str]:
    """Every process's figures, combined per name, in the order they were first recorded."""
    values: dict[str, list] = {}
    how: dict[str, str] = {}
    for path in sorted(directory.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            values.setdefault(entry["name"], []).append(entry["value"])
            how[entry["name"]] = entry["combine"]
    return {name: COMBINE[how[name]](items) for name, items in values.items()}


def table(figures: dict[str, float | int | str]) -> list[str]:
    """The figures as aligned text lines."""
    width = max(len(name) for name in figures)
    return [f"{name:<{width}}  {value:>10}" for name, value in figures.items()]


# --- pytest hooks (re-exported by tests/reliability/conftest.py) ---------------------------

_OWNED = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    global _directory
    if _directory is not None:  # loaded as a plugin and as a conftest: configure once
        return
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        given = workerinput.get(_WORKER_KEY)
        _directory = Path(given) if given else None
        return
    _directory = Path(tempfile.mkdtemp(prefix="psync-figures-"))
    config.stash[_OWNED] = _directory


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist, on the controller: tell each worker where to write."""
    if _directory is not None:
        node.workerinput[_WORKER_KEY] = str(_directory)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    directory = config.stash.get(_OWNED, None)
    if directory is None or not directory.exists():
        return
    figures = collected(directory)
    shutil.rmtree(directory, ignore_errors=True)  # also marks the table as printed
    if figures:
        terminalreporter.write_sep("=", "reliability figures")
        for line in table(figures):
            terminalreporter.write_line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _directory
    directory = config.stash.get(_OWNED, None)
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
    _directory = None
