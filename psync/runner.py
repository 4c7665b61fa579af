"""The resident runner: ``psync run`` without a new interpreter importing Prefect each time.

A ``psync run`` in a fresh process spends about 6 s importing Prefect, SQLAlchemy, the models
and the flows before a run that takes 0.3 s (``bench/REPORT.md``, "Run overhead"). ``psync up``
therefore starts one more process, ``psync runner``, that imports every flow once and then runs
flows on request **in its own process**, as real Prefect flow runs against the stack's server:
the very ``psync run`` command (``psync.cli.run_flow``) runs there, so the flow run, its states,
artifacts, failure messages, output lines and exit code are those of today's ``psync run``.

The channel is a unix domain socket in the stack's state folder (``runner.sock``, mode 0600,
made under a umask that never lets it be anything else; no TCP port). The runner answers only
peers of its own user (``SO_PEERCRED``); the client connects only to a socket its user owns.
A request carries the ``run`` command's arguments (the flow's name and its ``-p`` values:
never personal in this project), whether ``--debug`` was given, the caller's
``PREFECT_API_URL`` (if set) and a SHA-256 fingerprint of its database URL (never the URL); the
answer carries the command's exit code and its stdout and stderr text.

**One run at a time.** The runner takes a connection, runs its flow to the end in the main
thread, answers, and only then takes the next (the socket's backlog is the queue): a run
sets process-wide state for its duration (the redirected stdout/stderr, the Prefect console
handler's stream, ``temporary_settings``), each processor's rate-limit bucket is per process
(``connectors.transport.processor_limiter``; the README's arithmetic counts the runner as one
run at a time), and Prefect turns a SIGTERM into a Crashed state only in the main thread.

**When the runner is used.** ``psync run`` asks it when the socket exists (PSYNC_RUNNER_SOCKET,
default ``.psync/stack/runner.sock`` under the current folder, where ``psync up`` puts it;
empty: never), the caller's ``PREFECT_API_URL`` is unset or the runner's, and the caller's
database is the runner's. Otherwise (no stack, another server, another database, the runner
refusing) the run happens in the calling process as before. The run then sees the runner's
settings (the stack's, as the worker's runs do), not the calling shell's.

**Crashes.** SIGTERM (``psync down``) during a run: Prefect's engine, in the main thread,
sets the run Crashed and the runner exits; the client is told in one line. SIGKILL cannot be
caught: that run stays Running on the server (as for any process killed so), and the
client says the runner stopped. A client that goes away (Ctrl-C) does not stop its run, which
goes on to its end (the UI shows it); nothing is ever run twice: a client falls back to its
own process only when no runner took the request.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import ExitStack, contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

PROTOCOL = 1
SOCKET_NAME = "runner.sock"
# How long the runner waits for a connected client's request line (not for its run).
REQUEST_SECONDS = 10.0
# How long a client waits for the runner to accept; a busy runner accepts from its backlog.
CONNECT_SECONDS = 2.0
BACKLOG = 32
_MAX_REQUEST = 1 << 20

# True in the runner's own process: its `psync run` runs here, never asks a runner.
_in_runner = False
_command: Any = None  # the `psync` click group (psync.cli's), in the runner


class RunnerGone(Exception):
    """The runner took the request and stopped before answering: the run's end is in the UI."""


# --- both sides -------------------------------------------------------------------------


def database_fingerprint(url: str) -> str:
    """A SHA-256 of the database URL (a relative SQLite path made absolute), so that the two
    sides compare databases without the URL, which may hold a password, crossing."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        url = prefix + os.path.abspath(url.removeprefix(prefix))
    return hashlib.sha256(url.encode()).hexdigest()


def _same_api(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


# --- the client: `psync run` -------------------------------------------------------------


def ask(argv: Sequence[str], *, prog: str, debug: bool, socket_path: str, database_url: str) -> int | None:
    """Run ``psync run ARGV`` on the resident runner: its stdout and stderr written here, its
    exit code returned; None when no runner took it (run it in this process then).

    Imports nothing beyond the standard library. Raises RunnerGone when the runner took the
    request and did not answer (it stopped mid-run: not to be run again here).
    """
    if _in_runner or not socket_path:
        return None
    path = Path(socket_path)
    try:
        if path.stat().st_uid != os.getuid():  # another user's socket: not ours to talk to
            return None
    except OSError:
        return None
    request = {
        "v": PROTOCOL,
        "argv": list(argv),
        "prog": prog,
        "debug": debug,
        "api_url": os.environ.get("PREFECT_API_URL") or None,
        "database": database_fingerprint(database_url),
    }
    try:
        conn = _connect(path)
    except OSError:  # nothing listening (a stale socket): no runner
        return None
    with conn:
        try:
            conn.sendall(json.dumps(request).encode() + b"\n")
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            return None  # it went before reading anything: nothing ran
        answer = _read_answer(conn)
    if answer is None:
        raise RunnerGone(f"the resident runner stopped before answering; see {path.parent / 'runner.log'}")
    if "declined" in answer:
        return None
    sys.stdout.write(answer.get("stdout", ""))
    sys.stdout.flush()
    sys.stderr.write(answer.get("stderr", ""))
    sys.stderr.flush()
    return int(answer["code"])


def ping(socket_path: Path, timeout: float = CONNECT_SECONDS) -> int | None:
    """The runner's pid when it answers at `socket_path`, else None."""
    try:
        with _connect(socket_path, timeout) as conn:
            conn.sendall(json.dumps({"v": PROTOCOL, "ping": True}).encode() + b"\n")
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(timeout)
            answer = _read_answer(conn)
    except OSError:
        return None
    return int(answer["pid"]) if answer and "pid" in answer else None


def _connect(path: Path, timeout: float = CONNECT_SECONDS) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(timeout)
        conn.connect(str(path))
        conn.settimeout(None)  # a run takes as long as it takes
    except BaseException:
        conn.close()
        raise
    return conn


def _read_answer(conn: socket.socket) -> dict[str, Any] | None:
    chunks = []
    try:
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    except OSError:
        return None
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None


# --- the runner: `psync runner` -----------------------------------------------------------


def serve(socket_path: Path, command: Any, say=print) -> None:
    """Import every flow, then answer ``psync run`` requests at `socket_path` one at a time
    with `command` (the ``psync`` click group, handed in by psync.cli, which imports this
    module), until SIGTERM or SIGINT. The socket is removed on the way out."""
    global _in_runner, _command
    _in_runner = True
    _command = command
    # Prefect's console shows warnings only, as under `psync run` (read when its logging is
    # set up, on import); every request's own console lines go to that request's stderr.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    import prefect.main  # noqa: F401 - the import every `psync run` would pay, paid once

    from core.settings import get_settings
    from flows.registry import FLOWS, get_flow

    for name in FLOWS:
        get_flow(name)
    settings = get_settings()
    own = {
        "api_url": os.environ.get("PREFECT_API_URL", ""),
        "database": database_fingerprint(settings.database_url),
    }
    listener = _listen(socket_path)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    say(f"runner: pid {os.getpid()}, {len(FLOWS)} flows, at {socket_path}", flush=True)
    try:
        # Heartbeats off for good, as `psync run` has them off for its run (psync.cli's
        # _without_heartbeats, which then changes nothing per run), unless set.
        with _without_heartbeats(), ExitStack() as held:
            while True:
                conn, _ = listener.accept()
                with conn:
                    hold_prefect_client(held)
                    _answer(conn, own, FLOWS, say)
    except (SystemExit, KeyboardInterrupt):
        say("runner: stopped", flush=True)
    finally:
        listener.close()
        socket_path.unlink(missing_ok=True)


def _without_heartbeats() -> Any:
    from contextlib import nullcontext

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    if "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" in os.environ:
        return nullcontext()
    return temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def hold_prefect_client(stack: ExitStack) -> None:
    """One Prefect API client for every run from now on, held open on `stack`: Prefect's
    engine takes the client of the context it runs in (``SyncClientContext.get_or_create``)
    and makes one of its own for each run otherwise, 40-50 ms a run on this machine (its
    TLS context, loaded from the CA bundle even for a plain-HTTP API, 35 ms of it; a
    CSRF-token request; the server's version check) of an incremental newsletter sync's
    0.26 s. Every run here is against the runner's API (``_declined``). While the API does
    not answer yet, each run makes its own as before, and the next request tries again.
    The benchmarks run their flows so too (``bench.common.prefect_api``)."""
    from prefect.context import SyncClientContext

    if SyncClientContext.get() is not None:
        return
    try:
        stack.enter_context(SyncClientContext())
    except Exception:  # noqa: BLE001 - the run then reports the API's failure itself
        return


def _exit_on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _listen(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    if ping(path) is not None:
        raise RuntimeError(f"a runner already answers at {path}")
    path.unlink(missing_ok=True)  # a stale socket of a runner that was killed
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is 0600 from its first moment
    try:
        listener.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    listener.listen(BACKLOG)
    return listener


def _peer_uid(conn: socket.socket) -> int | None:
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None  # not Linux: the socket's mode 0600 is the guard
    _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i")))
    return uid


def _answer(conn: socket.socket, own: dict[str, str], known: Collection[str], say) -> None:
    uid = _peer_uid(conn)
    if uid is not None and uid != os.getuid():
        say(f"runner: refused a connection of uid {uid}", flush=True)
        return
    request = _read_request(conn)
    if request is None:  # nothing came
        return
    if request.get("v") != PROTOCOL:  # another version's client, or not one at all
        _send(conn, {"declined": "another protocol"})
        return
    if request.get("ping"):
        _send(conn, {"pid": os.getpid()})
        return
    declined = _declined(request, own)
    if declined:
        say(f"runner: declined: {declined}", flush=True)
        _send(conn, {"declined": declined})
        return
    argv = [str(a) for a in request["argv"]]
    # The flow's name only, and only a known one (a mistyped name might be anything).
    say(f"runner: psync run {argv[0] if argv and argv[0] in known else '(an unknown flow)'}", flush=True)
    started = time.perf_counter()
    try:
        code, out, err = run_command(argv, prog=str(request.get("prog") or "psync"), debug=bool(request.get("debug")))
    except _Stopped as stopped:
        _send(conn, stopped.answer)
        raise
    _send(conn, {"code": code, "stdout": out, "stderr": err})
    say(f"runner: exit {code} after {time.perf_counter() - started:.2f} s", flush=True)


def _read_request(conn: socket.socket) -> dict[str, Any] | None:
    conn.settimeout(REQUEST_SECONDS)
    data = b""
    try:
        while b"\n" not in data and len(data) < _MAX_REQUEST:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        return None
    if not data:
        return None
    try:
        request = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        return {}
    return request if isinstance(request, dict) else {}


def _declined(request: dict[str, Any], own: dict[str, str]) -> str:
    """Why this runner must not run the request (the caller then runs it itself), or ''."""
    if not isinstance(request.get("argv"), list):
        return "no arguments"
    api = request.get("api_url")
    if api and not _same_api(str(api), own["api_url"]):
        return "another Prefect API"
    if request.get("database") != own["database"]:
        return "another database"
    return ""


def _send(conn: socket.socket, answer: dict[str, Any]) -> None:
    try:
        conn.sendall(json.dumps(answer).encode())
    except OSError:
        pass  # the client went; its run is in the UI


def run_command(argv: Sequence[str], *, prog: str, debug: bool) -> tuple[int, str, str]:
    """``psync run ARGV`` in this process, as the command line runs it: exit code, stdout,
    stderr. A SIGTERM during the run (Prefect sets it Crashed) ends the runner after it."""
    out, err = io.StringIO(), io.StringIO()
    args = [*(["--debug"] if debug else []), "run", *argv]
    try:
        with redirect_stdout(out), redirect_stderr(err), _console_to(err):
            code = _command.main(args=args, prog_name=prog, standalone_mode=False)
    except BaseException as exc:  # a signal or exit during the run: answer, then go
        err.write("error: the resident runner was stopped during the run; the run's state is in the Prefect UI\n")
        code = 1
        raise _Stopped(code, out.getvalue(), err.getvalue()) from exc
    return int(code if isinstance(code, int) else 0), out.getvalue(), err.getvalue()


class _Stopped(SystemExit):
    def __init__(self, code: int, out: str, err: str) -> None:
        super().__init__(code)
        self.answer = {"code": code, "stdout": out, "stderr": err}


@contextmanager
def _console_to(stream: io.StringIO) -> Iterator[None]:
    """Prefect's console handlers write to `stream` for the run (each holds the stderr it
    was made with, in a rich Console), so its lines reach the caller as under ``psync run``."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [
        logging.getLogger(),
        *(v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    handlers = {h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}
    before = {h: (h.stream, h.console.file) for h in handlers}
    for handler in handlers:
        handler.stream = handler.console.file = stream
    try:
        yield
    finally:
        for handler, (old_stream, old_file) in before.items():
            handler.stream, handler.console.file = old_stream, old_file
