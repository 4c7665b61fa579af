"""Which index SQLite answers the sync's consent queries by (``EXPLAIN QUERY PLAN``).

The sync reads a list's changes after its cursor on every run, for both lists; the plan
looks for the few lapsed consents and the expiry for the pending ones. Without statistics
SQLite picks an index by its shape alone, and a new index can take a query over: these
tests name the index each query must use.
"""

from __future__ import annotations

import pytest
from sqlalchemy import event

from models.consent import count_changed_since, lapsed_subject_ids
from models.db import get_engine, transaction

pytestmark = pytest.mark.sqlite_only("SQLite's query planner")


def plan_of(url: str, run) -> str:
    """The query plan of the one statement `run(session)` executes."""
    engine = get_engine(url)
    statements: list[tuple[str, tuple]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many):
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        with transaction(url) as session:
            run(session)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    (statement, parameters), *_ = [s for s in statements if s[0].lstrip().upper().startswith("SELECT")]
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
    return "\n".join(row[-1] for row in rows)


def test_a_lists_changes_are_counted_from_the_index_alone(database_url):
    plan = plan_of(database_url, lambda session: count_changed_since(session, "service_offers", 0))
    assert "COVERING INDEX ix_consent_change_list (change_seq>?)" in plan, plan


def test_the_lapsed_are_found_by_their_state_not_by_their_list(database_url):
    plan = plan_of(database_url, lambda session: session.exec(lapsed_subject_ids("newsletter", 10)).all())
    assert "INDEX ix_consent_state (state=?)" in plan, plan
