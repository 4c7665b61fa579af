"""Every ``psync`` command fails in one or two lines on stderr, with a documented exit code
(0 ok, 1 records rejected or a job failed, 2 usage or configuration), nothing personal in
them, and the traceback only with ``--debug`` or PSYNC_DEBUG=1."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from core.settings import get_settings
from psync.cli import app

from support import TEST_KEY

EMAIL = "erika.mustermann@example.de"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner, *args, **kw):
    get_settings.cache_clear()
    return runner.invoke(app, list(args), prog_name="psync", **kw)


def said(result) -> list[str]:
    return result.stderr.splitlines()


def consented(runner, folder) -> None:
    """Erika signed up for the newsletter and confirmed it (intake, as the website hands over)."""
    common = {"list": "newsletter", "email": EMAIL, "ip": "192.0.2.10"}
    events = [
        {
            "type": "consent.signup",
            **common,
            "salutation": "Frau",
            "first_name": "Erika",
            "last_name": "Mustermann",
            "at": "2026-01-05T10:00:00+01:00",
            "source": "https://example.de/nl",
            "policy_version": "2026-01",
        },
        {"type": "consent.confirm", **common, "at": "2026-01-05T10:05:00+01:00"},
    ]
    path = folder / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    assert invoke(runner, "intake", str(path)).exit_code == 0


def test_a_missing_setting_is_one_line_naming_the_variables_in_a_real_process(database_url, tmp_path, prefect_harness):
    """The issue's case: a fresh install runs a job without processor settings (a real
    process: Prefect's console output counts too). Against the session's Prefect API: a
    temporary server of its own took too long to start on a loaded machine, once."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("PSYNC_")}
    env.update(
        PSYNC_DATABASE_URL=database_url, PSYNC_PSEUDONYM_KEY=TEST_KEY, PREFECT_API_URL=str(PREFECT_API_URL.value())
    )
    done = subprocess.run(
        [sys.executable, "-m", "psync.cli", "run", "sync-newsletter-consents"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: cleverreach: credentials not configured (PSYNC_CLEVERREACH_CLIENT_ID, PSYNC_CLEVERREACH_CLIENT_SECRET)",
        "hint: psync check names every missing setting",
    ]


def test_a_missing_setting_in_process(runner, settings, monkeypatch, prefect_harness):
    monkeypatch.delenv("PSYNC_TIMIFY_APP_SECRET")
    monkeypatch.delenv("PSYNC_TIMIFY_COMPANY_ID")
    result = invoke(runner, "run", "push-bookings")
    assert result.exit_code == 2
    assert (
        said(result)[0]
        == "error: timify: credentials not configured (PSYNC_TIMIFY_COMPANY_ID, PSYNC_TIMIFY_APP_SECRET)"
    )
    assert len(said(result)) == 2


def test_an_invalid_setting_names_the_variable_not_its_value(runner, settings, monkeypatch):
    monkeypatch.setenv("PSYNC_HTTP_MAX_ATTEMPTS", "0")
    monkeypatch.setenv("PSYNC_CLEVERREACH_BATCH_SIZE", EMAIL)
    result = invoke(runner, "audit", "verify")
    assert result.exit_code == 2
    assert said(result) == [
        (
            "error: configuration: PSYNC_CLEVERREACH_BATCH_SIZE: Input should be a valid integer, unable to parse "
            "string as an integer; PSYNC_HTTP_MAX_ATTEMPTS: Input should be greater than or equal to 1"
        ),
        "hint: .env.example describes every setting",
    ]
    monkeypatch.setenv("PSYNC_TIMIFY_SERVICE_POINTS", '{"sp-1": "' + EMAIL + '"')
    broken = invoke(runner, "check")
    assert broken.exit_code == 2
    assert said(broken)[0] == "error: configuration: PSYNC_TIMIFY_SERVICE_POINTS: not valid JSON"
    assert EMAIL not in result.output + broken.output


def test_a_processor_down_is_one_line_naming_processor_operation_and_reason(
    runner, against_sandbox, monkeypatch, prefect_harness, no_sleep, tmp_path
):
    from support import free_port

    consented(runner, tmp_path)
    monkeypatch.setenv("PSYNC_CLEVERREACH_BASE_URL", f"http://127.0.0.1:{free_port()}/cleverreach")
    monkeypatch.setenv("PSYNC_HTTP_MAX_ATTEMPTS", "2")
    result = invoke(runner, "run", "sync-newsletter-consents")
    assert result.exit_code == 1
    [line] = said(result)  # the job's reason: which records are left, and the processor's failure
    assert line.startswith("error: sync-newsletter-consents") and "cleverreach oauth.token" in line, line
    assert "ConnectionError) after 2 attempt(s)" in line
    assert "erika" not in result.output.lower() and "mustermann" not in result.output.lower()
    assert result.stdout == ""


def test_an_erasure_with_a_processor_down_says_so_in_one_or_two_lines_without_the_person(
    runner, against_sandbox, monkeypatch, prefect_harness, no_sleep, tmp_path
):
    from support import free_port

    consented(runner, tmp_path)
    assert invoke(runner, "run", "sync-newsletter-consents").exit_code == 0
    monkeypatch.setenv("PSYNC_CLEVERREACH_BASE_URL", f"http://127.0.0.1:{free_port()}/cleverreach")
    monkeypatch.setenv("PSYNC_HTTP_MAX_ATTEMPTS", "1")
    result = invoke(runner, "erasure", "request", "--email", EMAIL, "--reference", "AZ 1/26")
    assert result.exit_code == 1, result.output
    assert result.stdout.startswith("request ")  # opened, then the fan-out failed at CleverReach
    [line] = said(result)
    assert line.startswith("error: erasure request ") and "cleverreach (oauth.token" in line
    assert "Traceback" not in result.output
    assert "erika" not in result.output.lower() and "mustermann" not in result.output.lower()


@pytest.mark.parametrize(
    ("args", "first"),
    [
        (["run", "no-such-flow"], "error: Invalid value: unknown flow 'no-such-flow'; known: "),
        (
            ["run", "push-bookings", "--param", "records_per_task"],
            "error: Invalid value: --param 'records_per_task': expected key=value",
        ),
        (  # checked before a flow run is made: nothing runs
            ["run", "push-bookings", "--param", "records_per_task=many"],
            "error: Invalid value: --param records_per_task: Input should be a valid integer",
        ),
        (  # a moment without its zone: which day it was in Berlin would be a guess
            ["run", "expire-unconfirmed-optins", "--param", "as_of=2026-12-01T03:30:00"],
            "error: Invalid value: --param as_of: Input should have timezone info",
        ),
        (
            ["run", "push-bookings", "--param", "per_task=1"],
            "error: Invalid value: --param: push-bookings: Function expects parameters ['booking_ids', ",
        ),
        (
            ["erasure", "extend", "R-1", "--months", "5", "--reason", "r", "--informed-on", "2026-01-01"],
            "error: Invalid value for '--months': Input should be less than or equal to 2",
        ),
        (["erasure", "request", "--received-at", EMAIL], "error: Invalid value for '--received-at': "),
        (["erasure", "status", "--email", EMAIL], "error: No such option: --email"),
        # A malformed address, at every option that takes one (was exit 1, after the door).
        (["erasure", "request", "--email", "erika@@example.de"], "error: Invalid value for '--email': not a valid"),
        (["request", "access", "--email", "erika@@example.de"], "error: Invalid value for '--email': not a valid"),
        (
            ["request", "rectification", "--email", EMAIL, "--new-email", "erika@@example.de"],
            "error: Invalid value: changes: invalid email",
        ),
        (["consent", "proof", "--email", "erika@@example.de"], "error: Invalid value for '--email': not a valid"),
        (["no-such-command"], "error: No such command 'no-such-command'."),
        (["intake"], "error: Invalid value: give a FILE.jsonl (or --schema)"),
    ],
)
def test_a_bad_parameter_is_a_usage_error_in_two_lines(runner, settings, args, first):
    result = invoke(runner, *args)
    assert result.exit_code == 2
    lines = said(result)
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith(first)
    assert lines[1].startswith("usage: psync") and lines[1].endswith(" --help")
    assert EMAIL not in result.output and "erika@@" not in result.output and "Traceback" not in result.output


def test_an_unexpected_failure_shows_only_its_type_and_the_traceback_with_debug(runner, settings, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyError(EMAIL)

    monkeypatch.setattr("models.audit.verify", boom)
    plain = invoke(runner, "audit", "verify")
    assert plain.exit_code == 1
    assert said(plain) == ["error: unexpected KeyError", "the traceback: run again with --debug"]
    assert EMAIL not in plain.output

    for debug in ([], ["--debug"]):
        if not debug:
            monkeypatch.setenv("PSYNC_DEBUG", "1")
        shown = invoke(runner, "audit", "verify", *debug)
        assert shown.exit_code == 1
        assert "Traceback (most recent call last)" in shown.stderr
        assert said(shown)[-1] == "error: unexpected KeyError"


def test_debug_may_stand_anywhere_and_is_in_the_help(runner, settings):
    assert invoke(runner, "--debug", "audit", "verify").exit_code == 0
    assert invoke(runner, "audit", "verify", "--debug").exit_code == 0
    assert "--debug" in invoke(runner, "--help").output


def test_exit_codes_of_commands_that_already_had_them(runner, settings, tmp_path):
    bad = tmp_path / "events.jsonl"
    bad.write_text('{"type": "consent.signup", "email": "' + EMAIL + '"}\n')
    rejected = invoke(runner, "intake", str(bad))
    assert rejected.exit_code == 1 and EMAIL not in rejected.output
    unknown = invoke(runner, "erasure", "status", "00000000-0000-0000-0000-000000000000")
    assert unknown.exit_code == 1 and len(said(unknown)) == 1


def test_a_database_without_the_schema_says_to_upgrade_it(runner, empty_database, monkeypatch, tmp_path):
    monkeypatch.setenv("PSYNC_DATABASE_URL", empty_database)
    monkeypatch.setenv("PSYNC_PSEUDONYM_KEY", TEST_KEY)
    events = tmp_path / "events.jsonl"
    events.write_text(
        '{"type": "erasure.request", "email": "'
        + EMAIL
        + '", "channel": "portal", "at": "2026-01-05T10:00:00+01:00"}\n'
    )
    result = invoke(runner, "intake", str(events))
    get_settings.cache_clear()
    assert result.exit_code == 2
    assert said(result) == ["error: database: the schema is missing or behind the code", "hint: psync db upgrade"]
    assert EMAIL not in result.output


def test_a_missing_file_is_a_usage_error(runner, settings, tmp_path):
    result = invoke(runner, "intake", str(tmp_path / "nowhere.jsonl"))
    assert result.exit_code == 2
    assert said(result)[0].startswith("error: Invalid value for 'file': file ") and said(result)[0].endswith(
        "does not exist."
    )
