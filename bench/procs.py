"""The sandbox in its own process; CPU and memory accounting of processes via /proc."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import requests

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
ROOT = Path(__file__).resolve().parent.parent


def psync_command(*args: str) -> list[str]:
    """``psync ARGS`` with this interpreter's installation (the venv's script if it has one)."""
    script = Path(sys.executable).parent / "psync"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "psync.cli", *args]


class Sandbox:
    """``psync sandbox --port P`` as a child process; a context manager that always stops it."""

    def __init__(self, port: int, log_path: Path):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return psync_command("sandbox", "--host", "127.0.0.1", "--port", str(self.port))

    def start(self, timeout: float = 60.0) -> Sandbox:
        env = {**os.environ, "DO_NOT_TRACK": "1"}
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"sandbox exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/_sandbox/faults", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"sandbox did not answer within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    # control routes -------------------------------------------------------------------
    def reset(self) -> None:
        requests.post(f"{self.url}/_sandbox/reset", json={"fault_rate": 0.0}, timeout=30).raise_for_status()

    def state(self) -> dict:
        response = requests.get(f"{self.url}/_sandbox/state", timeout=300)
        response.raise_for_status()
        return response.json()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# CPU accounting -----------------------------------------------------------------------
def proc_cpu(pid: int) -> float:
    """User+system CPU seconds of one process (all its threads); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # after the ")" the fields start at #3 (state); utime is #14, stime #15
    return (int(fields[11]) + int(fields[12])) / _TICK


def descendants(pid: int) -> list[int]:
    """All live descendant pids of `pid` (via /proc/<pid>/task/*/children)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{current}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                stack.append(child)
    return found


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU seconds spent by this process, the sandbox and every other child (Prefect's server)."""

    def __init__(self, sandbox_pid: int | None):
        self.sandbox_pid = sandbox_pid

    def sample(self) -> dict[str, float]:
        others = [p for p in descendants(os.getpid()) if p != self.sandbox_pid]
        sandbox_tree = [self.sandbox_pid, *descendants(self.sandbox_pid)] if self.sandbox_pid else []
        others = [p for p in others if p not in sandbox_tree]
        return {
            "client": self_cpu(),
            "sandbox": sum(proc_cpu(p) for p in sandbox_tree),
            "prefect_server": sum(proc_cpu(p) for p in others),
        }

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: round(after[k] - before.get(k, 0.0), 2) for k in after}


# memory accounting --------------------------------------------------------------------
def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of one process in MB (VmRSS; VmHWM: its peak so far); 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    return sum(rss_mb(p) for p in (pid, *descendants(pid)))


# Forks the command from this small interpreter and reports its resource usage. Forked (or
# vforked) straight from the benchmark, the command would start with the benchmark's own
# high-water mark of resident memory: the kernel keeps the old one across exec (ru_maxrss).
_LAUNCHER = """
import json, os, sys
out, command = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(command[0], command)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as f:
    json.dump({"returncode": os.waitstatus_to_exitcode(status), "max_rss_kb": usage.ru_maxrss,
               "cpu_seconds": usage.ru_utime + usage.ru_stime}, f)
"""


def run_measured(
    command: Sequence[str],
    env: Mapping[str, str],
    output: Path,
    watch: Mapping[str, int] | None = None,
    interval: float = 0.1,
) -> dict:
    """Run `command` to its end and measure its memory; stdout to `output`, stderr beside it.

    The figure that counts is ``max_rss_mb``: the kernel's high-water mark of the command's
    resident memory (``ru_maxrss`` from ``wait4``, taken by a small launcher process that forks
    it). Meanwhile /proc is polled every `interval`: the command's own high-water mark
    (``VmHWM``, the same figure while it runs), the resident memory of it and its descendants
    together (``peak_tree_rss_mb``), and of the processes in `watch` (name -> pid).
    """
    usage_path = output.with_suffix(".usage.json")
    started = time.perf_counter()
    with output.open("wb") as out, output.with_suffix(".stderr").open("wb") as err:
        launcher = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(usage_path), *command],
            stdout=out,
            stderr=err,
            env=dict(env),
            cwd=ROOT,
        )
    samples: list[tuple[float, float]] = []
    watched = dict.fromkeys(watch or {}, 0.0)
    peak_tree = high_water = 0.0
    while launcher.poll() is None:
        tree = sum(tree_rss_mb(child) for child in descendants(launcher.pid))
        peak_tree = max(peak_tree, tree)
        high_water = max([high_water, *(rss_mb(child, "VmHWM") for child in descendants(launcher.pid))])
        samples.append((round(time.perf_counter() - started, 2), round(tree, 1)))
        for name, other in (watch or {}).items():
            watched[name] = max(watched[name], tree_rss_mb(other))
        time.sleep(interval)
    seconds = time.perf_counter() - started
    if launcher.returncode != 0:
        raise RuntimeError(f"the launcher of {command[0]} exited {launcher.returncode}")
    usage = json.loads(usage_path.read_text())
    return {
        "returncode": usage["returncode"],
        "seconds": seconds,
        "max_rss_mb": round(usage["max_rss_kb"] / 1024, 1),  # Linux: kilobytes
        "polled_high_water_mb": round(high_water, 1),
        "peak_tree_rss_mb": round(peak_tree, 1),
        "cpu_seconds": round(usage["cpu_seconds"], 2),
        "watched_peak_rss_mb": {k: round(v, 1) for k, v in watched.items()},
        "samples": samples,
    }
