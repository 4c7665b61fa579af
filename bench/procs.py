"""The sandbox in its own process, and CPU accounting of processes via /proc."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import requests

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Sandbox:
    """``psync sandbox --port P`` as a child process; a context manager that always stops it."""

    def __init__(self, port: int, log_path: Path):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        script = Path(sys.executable).parent / "psync"
        if script.exists():
            return [str(script), "sandbox", "--host", "127.0.0.1", "--port", str(self.port)]
        return [sys.executable, "-m", "psync.cli", "sandbox", "--port", str(self.port)]

    def start(self, timeout: float = 60.0) -> Sandbox:
        env = {**os.environ, "DO_NOT_TRACK": "1"}
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
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
