"""How every ``psync`` command fails: one or two lines on stderr and a documented exit code.

``PsyncGroup`` is the command group of ``psync``; its ``main`` runs the command and turns
whatever escapes it into ``error: <what>: <why>`` (and, where it helps, a second line saying
what to do), never a traceback unless ``--debug`` is given (anywhere on the command line) or
PSYNC_DEBUG=1 is set. The text comes from ``flows.common.reason``, which shows our own
exceptions' messages (names, ids, counts) and only the type of anything else, which might
quote a value; ``connectors.transport.redact`` blanks e-mail addresses in what click says
about a bad parameter.

Exit codes: 0 ok; 1 some records were rejected or a job, a processor or a check of the data
failed; 2 usage (a bad command, option or parameter) or configuration (a setting missing or
invalid, ``psync check`` not ready).

Prefect's console shows warnings and errors only (its INFO lines about temporary servers and
run states are noise for a command); with ``--debug`` it shows what PREFECT_LOGGING_LEVEL
says. The API's log handler (the UI's Logs tab) is not touched.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import typer
from typer._click import exceptions as click  # typer vendors click: its exceptions, not click's
from typer.core import TyperGroup

OK, FAILED, USAGE = 0, 1, 2
DEBUG_FLAG = "--debug"
# Prefect's console handler level, set for the command's duration (its logging reads this
# when it is set up, which happens inside the command).
CONSOLE_LEVEL = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
_DEBUG: ContextVar[bool] = ContextVar("psync_debug", default=False)

T = TypeVar("T")


class PsyncGroup(TyperGroup):
    """The ``psync`` group: failures in one or two lines, exit codes 0/1/2."""

    def main(  # type: ignore[override]  # click's signature, standalone_mode handled here
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        debug = DEBUG_FLAG in args or _debug_setting()
        args = [a for a in args if a != DEBUG_FLAG]
        token = _DEBUG.set(debug)
        try:
            with _quiet_prefect_console(debug):
                code = super().main(
                    args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra
                )
            code = code if isinstance(code, int) else OK
        except Exception as exc:  # noqa: BLE001 - every failure is said in one line
            if debug:
                traceback.print_exception(exc, file=sys.stderr)
            try:
                code, lines = describe(exc)
            except Exception:  # noqa: BLE001 - describing must not end in a traceback either
                code, lines = (
                    FAILED,
                    [f"error: unexpected {type(exc).__name__}", "the traceback: run again with --debug"],
                )
            for line in lines[: 1 if debug else 2]:
                typer.echo(line, err=True)
        finally:
            _DEBUG.reset(token)
        if not standalone_mode:
            return code
        sys.exit(code)


def describe(exc: BaseException) -> tuple[int, list[str]]:
    """The exit code and the one or two lines that say what failed, without personal data.

    >>> describe(click.BadParameter("expected key=value", param_hint="'--param'"))
    (2, ["error: Invalid value for '--param': expected key=value"])
    >>> describe(KeyError("erika@example.de"))[1][0]
    'error: unexpected KeyError'
    """
    from connectors.transport import ProcessorError, redact

    if isinstance(exc, click.NoArgsIsHelpError) and exc.ctx is not None:
        return USAGE, [exc.ctx.get_help()]  # a group given no command: its help, as click does
    if isinstance(exc, click.UsageError):
        lines = [f"error: {redact(exc.format_message())}"]
        if exc.ctx is not None:
            lines.append(f"usage: {exc.ctx.command_path} --help")
        return USAGE, lines
    if isinstance(exc, typer.Abort):
        return FAILED, ["error: aborted"]
    if isinstance(exc, click.ClickException):
        return exc.exit_code, [f"error: {redact(exc.format_message())}"]
    settings_problem = _invalid_settings(exc)
    if settings_problem:
        return USAGE, [f"error: configuration: {settings_problem}", "hint: .env.example describes every setting"]
    if isinstance(exc, ProcessorError) and exc.operation == "configure":
        missing = _missing_settings(exc.processor)
        named = f" ({', '.join(missing)})" if missing else ""
        return USAGE, [
            f"error: {exc.processor}: {exc.reason or 'not configured'}{named}",
            "hint: psync check names every missing setting",
        ]
    database = _database_problem(exc)
    if database:
        return database
    if isinstance(exc, ProcessorError):
        # Names and numbers only, by construction; redact() would take "oauth.token: connection
        # failed" for a token and blank it, so reason() is not asked.
        return FAILED, [f"error: {' '.join(str(exc).split())}"]
    from flows.common import reason

    why = reason(exc)
    if why.startswith("unexpected "):
        return FAILED, [f"error: unexpected {type(exc).__name__}", "the traceback: run again with --debug"]
    return FAILED, [f"error: {why}"]


def _database_problem(exc: BaseException) -> tuple[int, list[str]] | None:
    """A database error by its driver's class; the statement (never the values, the engine
    hides them) is left to --debug. A missing table means the schema is not upgraded."""
    from sqlalchemy.exc import DBAPIError

    if not isinstance(exc, DBAPIError):
        return None
    if re.search(r"no such table|relation .* does not exist|UndefinedTable", str(exc.orig)):
        return USAGE, ["error: database: the schema is missing or behind the code", "hint: psync db upgrade"]
    return FAILED, [
        f"error: database: {type(exc.orig).__name__}",
        "the statement and traceback: run again with --debug",
    ]


def _invalid_settings(exc: BaseException) -> str:
    """For the settings' own validation error: each bad variable and why (not its value)."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from psync.check import env_name

    if isinstance(exc, SettingsError):  # a value that is not JSON where JSON is expected
        field = re.search(r'field "([a-z0-9_]+)"', str(exc))
        return f"{_json_setting(field.group(1)) if field else 'a setting'}: not valid JSON"
    if not isinstance(exc, ValidationError) or exc.title != "Settings":
        return ""
    parts = [
        f"{env_name('.'.join(map(str, e['loc'][:2]))) if e['loc'] else 'settings'}: {e['msg']}"
        for e in exc.errors(include_input=False, include_url=False)
    ]
    return "; ".join(parts)


def _json_setting(field: str) -> str:
    """The variable of settings field `field` that is read as JSON; for a processor's group
    (the error names only the group), its one JSON field's."""
    from core.settings import ProcessorSettings, Settings
    from psync.check import env_name

    group = Settings.model_fields[field].annotation if field in Settings.model_fields else None
    if isinstance(group, type) and issubclass(group, ProcessorSettings):
        json_fields = [
            n for n, f in group.model_fields.items() if getattr(f.annotation, "__origin__", None) in (dict, list)
        ]
        return env_name(f"{field}.{json_fields[0]}") if len(json_fields) == 1 else f"{env_name(field)}_…"
    return env_name(field)


def _missing_settings(processor: str) -> list[str]:
    """The variables `processor`'s connector lacks (its credentials and URL), as ``psync
    check`` names them."""
    from core.settings import get_settings
    from psync.check import wanted

    try:
        return [name.split()[0] for name, is_set in wanted(get_settings(), processor, client_only=True) if not is_set]
    except Exception:  # noqa: BLE001 - the line is still said, without the names
        return []


def debugging() -> bool:
    """Whether the running command was given --debug (or PSYNC_DEBUG=1)."""
    return _DEBUG.get()


def _debug_setting() -> bool:
    """PSYNC_DEBUG, through the one settings object (false when the settings are broken)."""
    from core.settings import get_settings

    try:
        return get_settings().debug
    except Exception:  # noqa: BLE001 - broken settings are the command's error to say
        return False


class _SaidByTheCommand(logging.Filter):
    """Drops a flow's or task's ERROR record from the console: the command says it, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR or not record.name.startswith(RUN_LOGGERS)


@contextmanager
def flow_failures_said_once() -> Iterator[None]:
    """Around a command that runs flows in this process: their ERROR lines stay off the
    console (the API's log handler, the UI's Logs tab, still gets them), as the command's
    own ``error:`` line says the failure. Not with --debug."""
    if _DEBUG.get():
        yield
        return
    import prefect.main  # noqa: F401 - sets Prefect's logging up, so its console handler exists
    from prefect.logging.handlers import PrefectConsoleHandler

    said = _SaidByTheCommand()
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in ("prefect", *RUN_LOGGERS))]
    handlers = {h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}
    for handler in handlers:
        handler.addFilter(said)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(said)


@contextmanager
def _quiet_prefect_console(debug: bool) -> Iterator[None]:
    if debug or CONSOLE_LEVEL in os.environ:
        yield
        return
    os.environ[CONSOLE_LEVEL] = "WARNING"
    try:
        yield
    finally:
        os.environ.pop(CONSOLE_LEVEL, None)


@contextmanager
def clear_errors() -> Iterator[None]:
    """Our own refusals (an unknown id, a bad value, identifiers of two people) as one line
    on stderr and exit 1: their texts name ids and fields, never a person."""
    from models.subject_index import SubjectMismatch

    try:
        yield
    except (LookupError, SubjectMismatch, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def in_session(work: Callable[[Any], T]) -> T:
    """`work(session)` in one transaction, its refusals said by ``clear_errors``."""
    from models.db import transaction

    with clear_errors(), transaction() as session:
        return work(session)
