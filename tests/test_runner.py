"""The resident runner (psync/runner.py) for real: a ``psync runner`` process against the
session's Prefect API and sandbox, and ``psync run`` as a user types it, in processes of its
own. The runner runs the flow as a Prefect flow run the API shows, with the output and exit
code of ``psync run`` in its own process; the calling process imports no Prefect; a caller
with another database runs the flow itself; a SIGTERM mid-run leaves the run Crashed.
(tests/deploy/test_deployments.py checks the runner ``psync up`` starts.)"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from psync.runner import _declined, database_fingerprint, ping

from support import TEST_KEY

EMAIL = "resi.dent@example.de"
FLOW = "sync-newsletter-consents"


def _api() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": _api(), **extra}


def _runs(name: str) -> list[dict]:
    answer = requests.post(
        f"{_api()}/flow_runs/filter",
        json={"flows": {"name": {"any_": [name]}}, "sort": "EXPECTED_START_TIME_DESC"},
        timeout=30,
    )
    answer.raise_for_status()
    return answer.json()


def _psync(*args: str, env: dict[str, str], cwd: Path, importtime: bool = False) -> subprocess.CompletedProcess:
    python = [sys.executable, *(["-X", "importtime"] if importtime else [])]
    return subprocess.run(
        [*python, "-m", "psync.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _start_runner(socket_path: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        runner = subprocess.Popen(
            [sys.executable, "-m", "psync.cli", "runner", "--socket", str(socket_path)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while ping(socket_path) is None:
        if runner.poll() is not None or time.monotonic() > deadline:
            runner.kill()
            raise AssertionError(f"the runner did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return runner


def _stop(runner: subprocess.Popen) -> None:
    if runner.poll() is None:
        runner.terminate()
        try:
            runner.wait(timeout=30)
        except subprocess.TimeoutExpired:
            runner.kill()
            runner.wait()


def _consented(folder: Path, env: dict[str, str]) -> None:
    common = {"list": "newsletter", "email": EMAIL, "ip": "192.0.2.10"}
    events = [
        {
            "type": "consent.signup",
            **common,
            "first_name": "Resi",
            "last_name": "Dent",
            "at": "2026-01-05T10:00:00+01:00",
            "source": "https://example.de/nl",
            "policy_version": "2026-01",
        },
        {"type": "consent.confirm", **common, "at": "2026-01-05T10:05:00+01:00"},
    ]
    path = folder / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    assert _psync("intake", str(path), env={**env, "PSYNC_RUNNER_SOCKET": ""}, cwd=folder).returncode == 0


@pytest.fixture
def runner_env(against_sandbox, prefect_harness, tmp_path):
    """The runner's and the caller's environment: the test's database, keys and sandbox."""
    return _env(PSYNC_RUNNER_SOCKET=str(tmp_path / "runner.sock"))


def test_psync_run_on_the_resident_runner_and_without_it(runner_env, tmp_path):
    sock = tmp_path / "runner.sock"
    runner = _start_runner(sock, runner_env, tmp_path / "runner.log")
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        _consented(tmp_path, runner_env)
        before = len(_runs(FLOW))

        # The run with work: on the runner, a flow run on the API, this process without Prefect.
        done = _psync("run", FLOW, "-p", 'lists=["newsletter"]', env=runner_env, cwd=tmp_path, importtime=True)
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout)  # the counts, as `psync run` prints them
        imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
        assert not {m for m in imported if m.split(".")[0] in ("prefect", "flows", "sqlalchemy")}, sorted(imported)
        runs = _runs(FLOW)
        assert len(runs) == before + 1 and runs[0]["state"]["type"] == "COMPLETED"
        assert runs[0]["parameters"]["lists"] == ["newsletter"]
        assert "runner: psync run sync-newsletter-consents" in (tmp_path / "runner.log").read_text()
        assert EMAIL not in (tmp_path / "runner.log").read_text()

        # Nothing left to do: the runner's answer and this process's own run say the same.
        resident = _psync("run", FLOW, env=runner_env, cwd=tmp_path)
        own = _psync("run", FLOW, env={**runner_env, "PSYNC_RUNNER_SOCKET": ""}, cwd=tmp_path)
        # (A process of its own may add Prefect's "EventsWorker - Still processing" at its exit.)
        assert (resident.returncode, resident.stdout, resident.stderr) == (own.returncode, own.stdout, "")
        assert resident.returncode == 0 and len(_runs(FLOW)) == before + 3

        # A bad parameter: the same two lines, exit 2, and no flow run made.
        bookings_runs = len(_runs("push-bookings"))
        bad = _psync("run", "push-bookings", "-p", "records_per_task=abc", env=runner_env, cwd=tmp_path)
        assert bad.returncode == 2
        assert bad.stderr.splitlines() == [
            (
                "error: Invalid value: --param records_per_task: Input should be a valid integer, "
                "unable to parse string as an integer"
            ),
            "usage: python -m psync.cli run --help",
        ]
        assert len(_runs("push-bookings")) == bookings_runs
        unknown = _psync("run", "no-such-flow", env=runner_env, cwd=tmp_path)
        assert unknown.returncode == 2 and unknown.stderr.startswith(
            "error: Invalid value: unknown flow 'no-such-flow'"
        )

        # Another database: the runner declines, the caller runs the flow itself (and here
        # finds no schema there).
        other = f"sqlite:///{tmp_path / 'other.db'}"
        elsewhere = _psync("run", FLOW, env={**runner_env, "PSYNC_DATABASE_URL": other}, cwd=tmp_path)
        assert elsewhere.returncode == 2, elsewhere.stderr
        assert elsewhere.stderr.splitlines()[0] == "error: database: the schema is missing or behind the code"
        assert "runner: declined: another database" in (tmp_path / "runner.log").read_text()
    finally:
        _stop(runner)
    assert not sock.exists()

    # No runner (a stale socket file or none): the run happens in the calling process.
    sock.touch()
    alone = _psync("run", FLOW, env=runner_env, cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout == own.stdout


def test_a_runner_stopped_mid_run_leaves_the_run_crashed(runner_env, tmp_path, sandbox):
    sock = tmp_path / "runner.sock"
    runner = _start_runner(sock, runner_env, tmp_path / "runner.log")
    try:
        _consented(tmp_path, runner_env)
        before = {r["id"] for r in _runs(FLOW)}
        # Every processor answer takes 5 s: the run is mid-call when the runner is stopped.
        requests.post(f"{sandbox}/_sandbox/faults", json={"latency_ms": 5000}, timeout=10).raise_for_status()
        client = subprocess.Popen(
            [sys.executable, "-m", "psync.cli", "run", FLOW],
            env=runner_env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while not (new := [r for r in _runs(FLOW) if r["id"] not in before and r["state"]["type"] == "RUNNING"]):
            assert time.monotonic() < deadline and client.poll() is None, client.communicate()
            time.sleep(0.2)
        runner.send_signal(signal.SIGTERM)
        out, err = client.communicate(timeout=120)
        assert client.returncode == 1, err
        assert out == ""
        assert err.splitlines()[-1] == (
            "error: the resident runner was stopped during the run; the run's state is in the Prefect UI"
        )
        runner.wait(timeout=60)
        (run,) = [r for r in _runs(FLOW) if r["id"] == new[0]["id"]]
        assert run["state"]["type"] == "CRASHED", run["state"]
    finally:
        requests.post(f"{sandbox}/_sandbox/faults", json={"latency_ms": 0}, timeout=10)
        _stop(runner)
    assert not sock.exists()


def test_the_runner_declines_another_api_or_database():
    own = {"api_url": "http://127.0.0.1:4200/api", "database": database_fingerprint("sqlite:///.psync/psync.db")}
    request = {"argv": ["push-bookings"], "database": own["database"]}
    assert _declined({**request, "api_url": None}, own) == ""
    assert _declined({**request, "api_url": "http://127.0.0.1:4200/api/"}, own) == ""
    assert _declined({**request, "api_url": "http://127.0.0.1:4300/api"}, own) == "another Prefect API"
    other = database_fingerprint(f"sqlite:///{os.getcwd()}/other.db")
    assert _declined({**request, "database": other}, own) == "another database"
    # A relative SQLite path is the same database as its absolute form; the URL never crosses.
    assert database_fingerprint(f"sqlite:///{os.getcwd()}/.psync/psync.db") == own["database"]
    assert TEST_KEY not in json.dumps(own)


def test_the_runner_holds_one_prefect_client_for_all_its_runs(prefect_harness, monkeypatch):
    from contextlib import ExitStack

    from prefect import flow
    from prefect.client.orchestration import SyncPrefectClient

    from psync.runner import hold_prefect_client

    made: list[object] = []
    original = SyncPrefectClient.__init__

    def counted(self, *args, **kwargs):
        made.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(SyncPrefectClient, "__init__", counted)

    @flow(name="runner-client-check")
    def nothing() -> int:
        return 1

    assert [nothing(), nothing()] == [1, 1]
    assert len(made) == 2  # a client of its own for each run
    with ExitStack() as held:
        hold_prefect_client(held)
        hold_prefect_client(held)  # the next request: the same client
        assert [nothing(), nothing(), nothing()] == [1, 1, 1]
    assert len(made) == 3  # one more, for the three runs
