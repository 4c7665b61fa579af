"""``psync check``: what the settings let run, and (``--connect``) whether the processors agree.

Per processor: ``configured`` (every setting its jobs need is there), ``incomplete`` (some
are, the missing ones named by environment variable: its jobs cannot run), or ``not
configured`` (none is: its jobs are not in use here). With ``connect``, each configured
processor is asked through its connector's own ``from_settings`` (one attempt, no retries):
a token is fetched, and the configured CleverReach groups and the TIMIFY company's customer
fields are looked up. The check fails when a processor is incomplete, a call fails, or no
processor is configured at all.
Nothing here prints a secret; a ProcessorError names processor, operation and status only.

Example::

    report = check(get_settings(), connect=True)
    print(render(report)); raise SystemExit(0 if report.ok else 2)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Processor:
    """A processor and the jobs that need it. What it needs is said once, by its settings
    group (``core.settings.ProcessorSettings``: `needs`, `credential`, `jobs_need`); the
    intake door's only need is its secret."""

    name: str
    jobs: tuple[str, ...]


PROCESSORS = (
    Processor("cleverreach", ("sync-newsletter-consents", "pull-newsletter-unsubscribes", "erasure")),
    Processor("timify", ("push-bookings", "erasure")),
    Processor("flexperto", ("push-bookings (video)", "purge-video-chat-data", "erasure")),
    Processor("isic", ("forward-student-id-orders", "sync-student-id-order-status", "erasure")),
    Processor("nect", ("erasure",)),
    Processor("intake", ("psync serve",)),
)


def wanted(settings: Any, processor: str, client_only: bool = False) -> list[tuple[str, bool]]:
    """(variable, whether set) for what `processor` needs: what its client cannot do
    without, the credential (or its ``_BLOCK``), and unless `client_only` what its jobs need."""
    if processor == "intake":
        set_ = bool(settings.intake_secret or settings.intake_secret_block)
        return [("PSYNC_INTAKE_SECRET (or PSYNC_INTAKE_SECRET_BLOCK)", set_)]
    own = settings.processor(processor)
    names = list(own.needs) + ([] if client_only else list(own.jobs_need))
    if own.placeholder_url and "base_url" not in names:
        names.insert(0, "base_url")
    found = [(env_name(f"{processor}.{name}"), own.is_set(name)) for name in names]
    credential = env_name(f"{processor}.{own.credential}")
    found.append((f"{credential} (or {credential}_BLOCK)", own.is_set(own.credential)))
    return found


def env_name(setting: str) -> str:
    """The environment variable of a settings field.

    >>> env_name("timify.app_id")
    'PSYNC_TIMIFY_APP_ID'
    """
    return f"PSYNC_{setting.replace('.', '_').upper()}"


@dataclass
class Finding:
    """One processor's state, and what ``--connect`` found (lines without secrets)."""

    processor: str
    state: str  # configured | incomplete | not configured
    jobs: tuple[str, ...]
    missing: list[str] = field(default_factory=list)
    connected: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing stops this processor's jobs (an unused processor stops nothing)."""
        return self.state != "incomplete" and not self.failed


@dataclass
class Report:
    findings: list[Finding]
    notes: list[str]

    @property
    def ready(self) -> list[str]:
        """The processors (the intake aside) whose jobs can run."""
        return [f.processor for f in self.findings if f.state == "configured" and f.ok and f.processor != "intake"]

    @property
    def ok(self) -> bool:
        """Nothing configured stops a job, and some processor is ready."""
        return all(f.ok for f in self.findings) and bool(self.ready)


def configuration(settings: Any, processor: Processor) -> Finding:
    """What the settings say about `processor`, without calling anyone."""
    found = wanted(settings, processor.name)
    missing = [name for name, is_set in found if not is_set]
    present = len(found) - len(missing)
    state = "configured" if not missing else "incomplete" if present else "not configured"
    return Finding(processor.name, state, processor.jobs, missing)


def check(settings: Any, connect: bool = False, **http_options: Any) -> Report:
    """Every processor's finding; with `connect`, each ready one is also called.

    `http_options` go to the connectors' ``from_settings`` (tests pass ``session=``).
    """
    findings = [configuration(settings, p) for p in PROCESSORS]
    if connect:
        for finding in findings:
            probe = PROBES.get(finding.processor)
            if finding.state == "configured" and probe is not None:
                _connect(settings, finding, probe, http_options)
    notes = []
    if not (settings.pseudonym_key or settings.pseudonym_key_block):
        notes.append("PSYNC_PSEUDONYM_KEY not set: a random key in .psync/pseudonym.key is used (set it in production)")
    if not (settings.document_key or settings.document_key_block):
        notes.append("PSYNC_DOCUMENT_KEY not set: a random key in .psync/document.key is used (set it in production)")
    return Report(findings, notes)


def _connect(settings: Any, finding: Finding, probe: Callable, http_options: dict[str, Any]) -> None:
    from connectors.transport import ProcessorError, RetryPolicy
    from flows.common import reason

    # One attempt: a check should say what is wrong now, not wait out the retry policy.
    options = {"policy": RetryPolicy(max_attempts=1), **http_options}
    try:
        probe(settings, finding, options)
    except ProcessorError as exc:
        finding.failed.append(str(exc))
    except Exception as exc:  # noqa: BLE001 - any failure is a finding, said safely
        finding.failed.append(f"{finding.processor}: {reason(exc)}")


def _token(client: Any, finding: Finding) -> None:
    client.http.auth.token(force=True)
    finding.connected.append("token fetched")


def _cleverreach(settings: Any, finding: Finding, options: dict[str, Any]) -> None:
    from connectors import cleverreach

    client = cleverreach.from_settings(settings, **options)
    _token(client, finding)
    groups = {str(g.get("id")) for g in client.groups() if isinstance(g, dict)}
    for list_name in ("newsletter", "service_offers"):
        group = str(settings.cleverreach.group(list_name))
        if group in groups:
            finding.connected.append(f"group {group} ({list_name}) exists")
        else:
            variable = env_name(f"cleverreach.group_{list_name}")
            finding.failed.append(f"cleverreach: group {group} of {variable} does not exist")


def _timify(settings: Any, finding: Finding, options: dict[str, Any]) -> None:
    from connectors import timify

    client = timify.from_settings(settings, **options)
    _token(client, finding)
    fields = client.field_ids()
    absent = sorted(set(timify.FIELD_KEYS) - set(fields))
    if absent:
        finding.failed.append(f"timify: the company lacks the customer field(s) {', '.join(absent)}")
    else:
        finding.connected.append(f"company's customer fields present ({len(fields)})")
    # The connector has no call that lists services or resources: their ids are not checked.
    finding.unchecked.append("the service and resource ids (the connector has no call that lists them)")


def _token_only(module_name: str) -> Callable:
    def probe(settings: Any, finding: Finding, options: dict[str, Any]) -> None:
        from importlib import import_module

        _token(import_module(f"connectors.{module_name}").from_settings(settings, **options), finding)

    return probe


def _nect(settings: Any, finding: Finding, options: dict[str, Any]) -> None:
    from connectors import nect

    # Nect has no token: a lookup of a case nobody has shows whether the key is accepted.
    nect.from_settings(settings, **options).get_case("00000000-0000-0000-0000-000000000000")
    finding.connected.append("API key accepted")


PROBES: dict[str, Callable] = {
    "cleverreach": _cleverreach,
    "timify": _timify,
    "flexperto": _token_only("flexperto"),
    "isic": _token_only("isic"),
    "nect": _nect,
}


def render(report: Report) -> str:
    """The report as the operator reads it, one block per processor."""
    lines = []
    for f in report.findings:
        lines.append(f"{f.processor:<12} {f.state:<15} jobs: {', '.join(f.jobs)}")
        if f.missing:
            verb = "missing" if f.state == "incomplete" else "to set"
            lines.append(f"{'':<12} {verb}: {', '.join(f.missing)}")
        lines.extend(f"{'':<12} ok: {text}" for text in f.connected)
        lines.extend(f"{'':<12} not checked: {text}" for text in f.unchecked)
        lines.extend(f"{'':<12} FAILED: {text}" for text in f.failed)
    lines.extend(f"note: {note}" for note in report.notes)
    bad = [f.processor for f in report.findings if not f.ok]
    if bad:
        lines.append(f"not ready: {', '.join(bad)}")
    elif not report.ready:
        lines.append("not ready: no processor is configured (see .env.example)")
    else:
        lines.append(f"ready: {', '.join(report.ready)}")
    return "\n".join(lines)
