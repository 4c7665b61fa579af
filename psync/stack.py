"""``make up`` / ``make down``: a local Prefect server, the sandbox, the work pool, every
deployment of ``prefect.yaml``, one process worker, the resident runner that ``psync run``
hands its runs to (``psync runner``, psync/runner.py; its socket ``<state>/runner.sock``) and
the website's HTTP intake (``psync serve``, when given a port), as background processes.

The end-to-end deployment tests start the same stack on free ports (``Stack.up``), so what
a user starts by hand and what CI proves are one piece of code. Everything it starts is
recorded in ``<state>/pids.json`` and logs to ``<state>/*.log``; ``down`` stops exactly that.

Example::

    stack = Stack(root=Path.cwd(), state=Path(".psync/stack"))
    stack.up()      # UI on http://127.0.0.1:4200

The intake's shared secret is PSYNC_INTAKE_SECRET when set; otherwise one is made once in
``<state>/intake-secret`` (mode 0600) for the local website to sign with.
    stack.down()
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

from psync.sandbox_env import sandbox_environment

POOL = "psync-process"
HOST = "127.0.0.1"
# `down` stops the worker first, so no flow run starts against a server that is going.
# The resident runner before it: a run it has going is set Crashed while the server listens.
STOP_ORDER = ("runner", "worker", "intake", "sandbox", "server")


@dataclass
class Stack:
    """The local stack's places and ports. `extra_env` overrides what the worker sees."""

    root: Path
    state: Path
    api_port: int = 4200
    sandbox_port: int = 8700
    # The HTTP intake's port; None starts none (the deployment tests need no door).
    intake_port: int | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    say: Callable[[str], None] = print
    # Started by this process: waited for on `down`, so none is left a zombie.
    _children: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}/api"

    @property
    def sandbox_url(self) -> str:
        return f"http://{HOST}:{self.sandbox_port}"

    @property
    def intake_url(self) -> str:
        return f"http://{HOST}:{self.intake_port}"

    @property
    def runner_socket(self) -> Path:
        """Where the resident runner (``psync runner``, psync/runner.py) listens."""
        return (self.state / "runner.sock").resolve()

    def environment(self) -> dict[str, str]:
        """The environment of every process the stack starts.

        The processors are the sandbox's; the database is the checkout's SQLite file unless
        PSYNC_DATABASE_URL is set (PostgreSQL for several workers). Prefect keeps its own
        database under the state folder and never phones home.
        """
        root = self.root.resolve()
        env = dict(os.environ)
        env.update(
            PREFECT_HOME=str((self.state / "prefect-home").resolve()),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            PSYNC_PROJECT_DIR=str(root),
            **sandbox_environment(self.sandbox_url, rate_per_second=50),
        )
        env.setdefault("PSYNC_DATABASE_URL", f"sqlite:///{root / '.psync' / 'psync.db'}")
        env.update(self.extra_env)
        if self.intake_port is not None and not _intake_secret_configured(env):
            env["PSYNC_INTAKE_SECRET"] = self._local_intake_secret()
        return env

    def _local_intake_secret(self) -> str:
        path = self.state / "intake-secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
                out.write(secrets.token_hex(32))
        return path.read_text().strip()

    # --- up -------------------------------------------------------------------------
    def up(self) -> None:
        """Start everything, or fail naming the step and its log (nothing is left running)."""
        self.state.mkdir(parents=True, exist_ok=True)
        if self._pids():
            raise RuntimeError(f"a stack is already running (see {self._pid_file()}); run `make down` first")
        env = self.environment()
        try:
            self._start("server", [*_prefect(), "server", "start", "--host", HOST, "--port", str(self.api_port)], env)
            _wait_for(f"{self.api_url}/health", "the Prefect server", self.state / "server.log")
            self._start("sandbox", [*_psync(), "sandbox", "--host", HOST, "--port", str(self.sandbox_port)], env)
            _wait_for(f"{self.sandbox_url}/_sandbox/state", "the sandbox", self.state / "sandbox.log")
            self._step("database", [*_psync(), "db", "upgrade"], env)
            self._step("work-pool", [*_prefect(), "work-pool", "create", POOL, "--type", "process", "--overwrite"], env)
            self._step("deploy", [*_prefect(), "--no-prompt", "deploy", "--all"], env)
            self._start("worker", [*_prefect(), "worker", "start", "--pool", POOL, "--type", "process"], env)
            self._start("runner", [*_psync(), "runner", "--socket", str(self.runner_socket)], env)
            _wait_for_runner(self.runner_socket, self.state / "runner.log", self._children["runner"])
            if self.intake_port is not None:
                self._start("intake", [*_psync(), "serve", "--host", HOST, "--port", str(self.intake_port)], env)
                _wait_for(f"{self.intake_url}/v1/health", "the HTTP intake", self.state / "intake.log")
        except BaseException:
            self.down()
            raise
        door = f"  intake {self.intake_url}/v1/events" if self.intake_port is not None else ""
        self.say(f"up: UI {self.api_url.removesuffix('/api')}  sandbox {self.sandbox_url}{door}  logs {self.state}/")

    def _start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        log = (self.state / f"{name}.log").open("ab")
        # A session of its own: `down` stops the process and whatever it started
        # (the worker's flow-run processes, the server's services).
        process = subprocess.Popen(
            command,
            cwd=self.root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self._children[name] = process
        pids = self._pids()
        pids[name] = process.pid
        self._pid_file().write_text(json.dumps(pids))
        self.say(f"up: {name} started (pid {process.pid})")

    def _step(self, name: str, command: list[str], env: dict[str, str]) -> None:
        log = self.state / f"{name}.log"
        with log.open("ab") as out:
            done = subprocess.run(command, cwd=self.root, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=300)
        if done.returncode:
            raise RuntimeError(f"{name} failed (exit {done.returncode}); see {log}")
        self.say(f"up: {name} done")

    # --- down -----------------------------------------------------------------------
    def down(self, grace: float = 10.0) -> list[str]:
        """Stop what `up` started, the worker first; returns the names stopped."""
        pids = self._pids()
        stopped = []
        for name in sorted(pids, key=lambda n: STOP_ORDER.index(n) if n in STOP_ORDER else -1):
            if _stop_group(pids[name], grace, self._children.pop(name, None)):
                stopped.append(name)
        self._pid_file().unlink(missing_ok=True)
        if stopped:
            self.say(f"down: stopped {', '.join(stopped)}")
        return stopped

    def _pid_file(self) -> Path:
        return self.state / "pids.json"

    def _pids(self) -> dict[str, int]:
        try:
            return json.loads(self._pid_file().read_text())
        except FileNotFoundError:
            return {}


def _intake_secret_configured(env: Mapping[str, str]) -> bool:
    """Whether the door has a secret from the environment or the .env file."""
    if env.get("PSYNC_INTAKE_SECRET") or env.get("PSYNC_INTAKE_SECRET_BLOCK"):
        return True
    from core.settings import Settings

    configured = Settings()
    return bool(configured.intake_secret or configured.intake_secret_block)


def _prefect() -> list[str]:
    return [sys.executable, "-m", "prefect"]


def _psync() -> list[str]:
    return [sys.executable, "-m", "psync.cli"]


def _wait_for(url: str, what: str, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not answer at {url} within {timeout:.0f} s; see {log}")


def _wait_for_runner(path: Path, log: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until the resident runner answers (it listens once every flow is imported); fails at
    once when it exited (an import error, another runner at that socket)."""
    from psync.runner import ping

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and ping(path) is not None:
            return
        if process.poll() is not None:
            raise RuntimeError(f"the resident runner exited ({process.returncode}); see {log}")
        time.sleep(0.3)
    raise RuntimeError(f"the resident runner did not answer at {path} within {timeout:.0f} s; see {log}")


def _stop_group(pid: int, grace: float, child: subprocess.Popen | None) -> bool:
    """SIGTERM the process group, SIGKILL it after `grace` seconds; False if it was gone."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if child is not None:
            child.poll()  # reap our own child, or the group stays "alive" as a zombie
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if child is not None:
        child.wait(timeout=grace)
    return True
