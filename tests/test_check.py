"""``psync check`` and ``psync sandbox --print-env``: complete, partial and wrong settings,
against the live sandbox (which refuses bad credentials)."""

from __future__ import annotations

import shlex

import pytest
from typer.testing import CliRunner

from core.settings import get_settings
from psync.cli import app
from psync.sandbox_env import CREDENTIAL_SECRET, sandbox_environment


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def run(runner, *args):
    get_settings.cache_clear()
    return runner.invoke(app, ["check", *args])


def test_complete_settings_connect_to_the_sandbox(runner, against_sandbox):
    result = run(runner, "--connect")
    assert result.exit_code == 0, result.output
    out = result.output
    for processor in ("cleverreach", "timify", "flexperto", "isic", "nect"):
        assert f"{processor:<12} configured" in out
    assert out.count("ok: token fetched") == 4
    assert "ok: group 1001 (newsletter) exists" in out and "ok: group 1002 (service_offers) exists" in out
    assert "ok: company's customer fields present" in out
    assert "ok: API key accepted" in out
    assert "FAILED" not in out
    assert out.rstrip().endswith("ready: cleverreach, timify, flexperto, isic, nect")
    assert CREDENTIAL_SECRET not in out


def test_partial_settings_name_what_is_missing_and_fail(runner, settings, monkeypatch):
    monkeypatch.delenv("PSYNC_TIMIFY_COMPANY_ID")
    monkeypatch.delenv("PSYNC_TIMIFY_APP_SECRET")
    for name in ("BASE_URL", "CLIENT_ID", "CLIENT_SECRET"):
        monkeypatch.delenv(f"PSYNC_ISIC_{name}")
    result = run(runner)
    assert result.exit_code == 2
    lines = result.output.splitlines()
    timify = lines.index(next(line for line in lines if line.startswith("timify")))
    assert "incomplete" in lines[timify]
    assert lines[timify + 1].split() == [
        "missing:",
        "PSYNC_TIMIFY_COMPANY_ID,",
        "PSYNC_TIMIFY_APP_SECRET",
        "(or",
        "PSYNC_TIMIFY_APP_SECRET_BLOCK)",
    ]
    assert any(line.startswith("isic") and "not configured" in line for line in lines)
    assert lines[-1] == "not ready: timify"


def test_nothing_configured_is_not_ready(runner, settings, monkeypatch):
    for name in sandbox_environment("http://x"):
        monkeypatch.delenv(name)
    result = run(runner)
    assert result.exit_code == 2
    assert result.output.splitlines()[-1] == "not ready: no processor is configured (see .env.example)"


def test_wrong_credentials_and_a_missing_group_fail_the_connect_check(runner, against_sandbox, monkeypatch):
    monkeypatch.setenv("PSYNC_CLEVERREACH_CLIENT_SECRET", "wrong-secret")
    monkeypatch.setenv("PSYNC_NECT_API_KEY", "wrong-key")
    monkeypatch.setenv("PSYNC_ISIC_CLIENT_ID", "someone-else")
    monkeypatch.setenv("PSYNC_TIMIFY_APP_SECRET", "wrong-secret")
    result = run(runner, "--connect")
    assert result.exit_code == 2
    out = result.output
    assert "FAILED: cleverreach oauth.token: HTTP 401" in out
    assert "FAILED: timify auth.token: HTTP 401" in out or "FAILED: timify auth.token" in out
    assert "FAILED: isic auth.token: HTTP 401" in out
    assert "FAILED: nect cases.get: HTTP 401" in out
    assert "flexperto" in out and out.count("ok: token fetched") == 1
    assert out.splitlines()[-1] == "not ready: cleverreach, timify, isic, nect"
    assert "wrong-secret" not in out and "wrong-key" not in out

    monkeypatch.setenv("PSYNC_CLEVERREACH_CLIENT_SECRET", CREDENTIAL_SECRET)
    monkeypatch.setenv("PSYNC_CLEVERREACH_GROUP_SERVICE_OFFERS", "4242")
    result = run(runner, "--connect")
    assert "FAILED: cleverreach: group 4242 of PSYNC_CLEVERREACH_GROUP_SERVICE_OFFERS does not exist" in result.output


def test_a_processor_that_does_not_answer_fails_the_connect_check_in_one_line(runner, settings, monkeypatch):
    from support import free_port

    for name, value in sandbox_environment(f"http://127.0.0.1:{free_port()}").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PSYNC_HTTP_CONNECT_TIMEOUT", "1")
    result = run(runner, "--connect")
    assert result.exit_code == 2
    failed = [line.strip() for line in result.output.splitlines() if "FAILED" in line]
    assert len(failed) == 5
    assert failed[0].startswith("FAILED: cleverreach oauth.token:")


def test_print_env_exports_point_everything_at_the_sandbox(runner):
    result = runner.invoke(app, ["sandbox", "--print-env", "--port", "8799"])
    assert result.exit_code == 0
    exported = dict(shlex.split(line)[1].split("=", 1) for line in result.output.splitlines())
    assert result.output.splitlines()[0].startswith("export PSYNC_")
    expected = sandbox_environment("http://127.0.0.1:8799", rate_per_second=50)
    assert exported == expected


def test_env_example_names_every_setting_and_its_block():
    import re
    from pathlib import Path

    from core.settings import Settings

    text = (Path(__file__).parents[1] / ".env.example").read_text()
    named = set(re.findall(r"^#?(PSYNC_[A-Z0-9_]+)=", text, flags=re.M))
    assert named == set(Settings.variables())


def test_the_empty_lines_of_env_example_configure_nothing(runner, tmp_path, monkeypatch):
    from pathlib import Path

    for name in list(__import__("os").environ):
        if name.startswith("PSYNC_"):
            monkeypatch.delenv(name)
    (tmp_path / ".env").write_text((Path(__file__).parents[1] / ".env.example").read_text())
    monkeypatch.chdir(tmp_path)
    result = run(runner)
    assert result.exit_code == 2, result.output
    assert result.output.count("not configured") == 6
