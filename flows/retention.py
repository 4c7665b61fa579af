"""``enforce-retention`` (daily): every deletion rule of the catalogue, executed or checked.

Rules whose ``enforced_by`` is this flow are executed here (``models.retention.EXECUTED``):
what is due by today is deleted at the processor through the same ``ERASER`` the erasure
fan-out uses, read back, noted in the register and audited under the subject's pseudonym.
The other rules with a period keep their own jobs (``expire-unconfirmed-optins``,
``purge-video-chat-data``, ``purge-student-id-documents``); this flow counts what is past any
rule's period (``models.retention.OVERDUE``) and fails, naming the rule ids, when something
is overdue, as ``psync retention check`` does. After each run the deletion concept, with
the periods in force, is published as an artifact.

Logs, artifacts and exceptions carry rule ids and counts only.
"""

from __future__ import annotations

from collections import Counter
from datetime import date
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
from flows.common import JobFailed, call_events, counts_artifact, decision, one_line_failure, write_audit
from models.db import transaction
from models.recipients import record_removed_for
from models.retention import EXECUTED, OVERDUE
from models.types import utcnow

FLOW = "enforce-retention"


def overdue(today: date, settings: Any) -> dict[str, int]:
    """Rule id → how many records are past the rule's period on `today` (only those > 0)."""
    with transaction() as session:
        found = {
            rule.id: OVERDUE[rule.id](session, today, rule.days(settings))
            for rule in catalogue.RULES
            if rule.id in OVERDUE
        }
    return {rule_id: count for rule_id, count in found.items() if count}


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


@flow(name=FLOW)
@one_line_failure
def enforce_retention(as_of: date | None = None) -> dict[str, int]:
    """Execute the deletion rules due today and check every rule for overdue records.

    Deletes at the processor what a rule of this flow makes due (a TIMIFY customer and
    appointments a configurable number of days after the last appointment), verified by
    reading back; fails naming the rule ids when any rule's period is past for a record.
    Publishes the deletion concept with the periods in force.

    Args:
        as_of: The Berlin calendar day to judge the periods by (empty: today).
    """
    today = as_of or berlin_today(utcnow())
    settings = get_settings()
    counts: Counter[str] = Counter()
    for rule in catalogue.RULES:
        if rule.enforced_by == FLOW:
            counts.update(execute_rule(rule.id, today))
    late = overdue(today, settings)
    counts["retention_overdue"] = sum(late.values())
    counts_artifact("enforce-retention", "Löschregeln / Deletion rules", counts)
    create_markdown_artifact(
        markdown=document("concept", settings, "de") + "\n" + document("concept", settings, "en"),
        key="deletion-concept",
        description="Löschkonzept mit den geltenden Fristen / deletion concept with the periods in force",
    )
    if counts.get("retention_failed") or late:
        where = ", ".join(f"{rule_id}: {count}" for rule_id, count in sorted(late.items()))
        failed = counts.get("retention_failed", 0)
        raise JobFailed(f"retention: {failed} deletion(s) failed; overdue by rule: {where or 'none'}")
    return dict(counts)
