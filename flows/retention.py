"""``enforce-retention`` (daily): every deletion rule of the catalogue, executed or checked.

Every rule with a period is executed from here, once a day:

- rules whose ``enforced_by`` is this flow (``models.retention.EXECUTED``): what is due by
  today is deleted at the processor through the same ``ERASER`` the erasure fan-out uses,
  read back, noted in the register and audited under the subject's pseudonym;
- rules with a purge of their own (``expire-unconfirmed-optins``, ``purge-video-chat-data``,
  ``purge-student-id-documents``: ``PURGES``): that flow runs as a subflow of this one, for
  the same day. Their deployments stay, unscheduled, for a run by hand.

Then it counts what is past any rule's period (``models.retention.OVERDUE``) and fails,
naming the rule ids, when something is overdue, as ``psync retention check`` does. A
restricted person's records (Art. 18) are neither deleted nor overdue: every rule and purge
leaves them out while the restriction lasts, and they are counted apart as "held by
restriction" (``models.retention.HELD``). After each run the deletion concept, with the
periods in force and those counts, is published as an artifact.

Logs, artifacts and exceptions carry rule ids and counts only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import date, datetime, time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from connectors import erasure as erasers
from connectors.erasure import AWAITING, VERIFIED, NotVerified, Target
from connectors.transport import ProcessorError
from core import catalogue
from core.clock import berlin_today
from core.records import document
from core.settings import get_settings
from flows.common import NO_RESULTS, JobFailed, call_events, counts_artifact, decision, one_line_failure, write_audit
from flows.registry import get_flow
from models.db import transaction
from models.recipients import record_removed_for
from models.retention import EXECUTED, HELD, OVERDUE
from models.types import BERLIN, utcnow

FLOW = "enforce-retention"
# The rules' own purge flows this one runs, and how each takes the day to judge by (the
# opt-in expiry judges a moment: noon of that Berlin day).
PURGES: dict[str, Callable[[date], date | datetime]] = {
    "expire-unconfirmed-optins": lambda day: datetime.combine(day, time(12), BERLIN),
    "purge-video-chat-data": lambda day: day,
    "purge-student-id-documents": lambda day: day,
}


def overdue(today: date, settings: Any) -> dict[str, int]:
    """Rule id → how many records are past the rule's period on `today` (only those > 0)."""
    with transaction() as session:
        found = {
            rule.id: OVERDUE[rule.id](session, today, rule.days(settings))
            for rule in catalogue.RULES
            if rule.id in OVERDUE
        }
    return {rule_id: count for rule_id, count in found.items() if count}


def held_by_restriction(today: date, settings: Any) -> dict[str, int]:
    """Rule id → how many records past the rule's period on `today` are kept because their
    subject is restricted (Art. 18; only those > 0). Not overdue: kept lawfully until lifted."""
    with transaction() as session:
        found = {
            rule.id: HELD[rule.id](session, today, rule.days(settings)) for rule in catalogue.RULES if rule.id in HELD
        }
    return {rule_id: count for rule_id, count in found.items() if count}


def held_section(held: dict[str, int]) -> str:
    """The deletion concept's note on what restrictions keep (rule ids and counts only)."""
    lines = ["## Durch Einschränkung zurückgehalten / Held by restriction (Art. 18)", ""]
    if not held:
        return "\n".join([*lines, "Keine / none"])
    return "\n".join([*lines, *(f"- {rule_id}: {count}" for rule_id, count in sorted(held.items()))])


@task(name="execute-deletion-rule", task_run_name="execute-{rule_id}", cache_policy=NO_CACHE)
@one_line_failure
def execute_rule(rule_id: str, today: date) -> dict[str, int]:
    """Delete what the rule says is due by `today`, at its processor, verified; counts.

    One task per rule (a batch), each subject's outcome committed on its own: a deletion
    done stays done when a later one fails.
    """
    settings = get_settings()
    rule = catalogue.rule(rule_id)
    find, note = EXECUTED[rule_id]
    with transaction() as session:
        due = find(session, today, rule.days(settings))
    counts: Counter[str] = Counter()
    counts["retention_due"] = len(due)
    eraser = erasers.eraser(rule.holder)
    if eraser is None or not due:
        return dict(counts)
    client = erasers.connect(rule.holder, settings)
    for item in due:
        target = Target(
            rule.holder, item.purpose, item.external_id, item.subject_id, item.pseudonym, None, settings, item.local
        )
        status: int | None = None
        try:
            result = eraser.erase(client, target)
            done = result == VERIFIED or (result == AWAITING and eraser.verify(client, target))
            outcome = "deleted" if done else "awaiting"
        except (ProcessorError, NotVerified) as exc:
            outcome, status = "failed", getattr(exc, "status", None)
        now = utcnow()
        with transaction() as session:
            events = call_events(client.http.drain_calls())
            if outcome == "deleted":
                record_removed_for(session, item.subject_id, rule.holder, item.purpose, now)
                note(session, item.subject_id, now)
            events.append(decision("retention.delete", outcome, rule.holder, item.pseudonym, f"rule={rule_id}", status))
            write_audit(session, events)
        if outcome == "deleted":
            counts["retention_deleted"] += 1
        elif outcome == "awaiting":
            counts["retention_awaiting"] += 1
        else:
            counts["retention_failed"] += 1
    get_run_logger().info("%s: %s", rule_id, dict(counts))
    return dict(counts)


@flow(name=FLOW, **NO_RESULTS)
@one_line_failure
def enforce_retention(as_of: date | None = None) -> dict[str, int]:
    """Execute every deletion rule due today and check every rule for overdue records.

    Deletes at the processor what a rule of this flow makes due (a TIMIFY customer and
    appointments a configurable number of days after the last appointment), verified by
    reading back; runs the rules' own purges (unconfirmed sign-ups, video chats, student-ID
    documents) as subflows; fails naming the rule ids when any rule's period is past for a
    record, or naming a purge that failed. Publishes the deletion concept with the periods
    in force.

    Args:
        as_of: The Berlin calendar day to judge the periods by (empty: today).
    """
    today = as_of or berlin_today(utcnow())
    settings = get_settings()
    counts: Counter[str] = Counter()
    for rule in catalogue.RULES:
        if rule.enforced_by == FLOW:
            counts.update(execute_rule(rule.id, today))
    failed_purges = []
    for name in sorted({rule.enforced_by for rule in catalogue.RULES if rule.enforced_by in PURGES}):
        # Its failure is caught, not raised: its own run says why it failed; the others still
        # run. Its counts are the value it returned, held in this process: read from its final
        # state instead, they are gone when the server answered that state with its own copy
        # (a retried request), as no flow persists its result (flows.common.NO_RESULTS).
        try:
            counts.update(get_flow(name)(as_of=PURGES[name](today)))
        except Exception:  # noqa: BLE001 - the purge's own run records its failure
            failed_purges.append(name)
    late = overdue(today, settings)
    counts["retention_overdue"] = sum(late.values())
    held = held_by_restriction(today, settings)
    counts["retention_held_by_restriction"] = sum(held.values())
    counts_artifact("enforce-retention", "Löschregeln / Deletion rules", counts)
    concept = document("concept", settings, "de") + "\n" + document("concept", settings, "en")
    create_markdown_artifact(
        markdown=concept + "\n\n" + held_section(held),
        key="deletion-concept",
        description="Löschkonzept mit den geltenden Fristen / deletion concept with the periods in force",
    )
    if counts.get("retention_failed") or late or failed_purges:
        where = ", ".join(f"{rule_id}: {count}" for rule_id, count in sorted(late.items()))
        failed = counts.get("retention_failed", 0)
        purges = f"; failed: {', '.join(failed_purges)}" if failed_purges else ""
        raise JobFailed(f"retention: {failed} deletion(s) failed; overdue by rule: {where or 'none'}{purges}")
    return dict(counts)
