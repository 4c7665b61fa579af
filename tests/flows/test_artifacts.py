"""The flows' count artifacts read in German and English, and show a 0 for what did not occur.

``flows.labels`` names every count key; the flows' own source is searched for the keys they
count, so a new count without a label fails here, not in front of the officer.
"""

from __future__ import annotations

import ast
import json
from datetime import date, timedelta
from pathlib import Path

import pytest

from flows import bookings, erasure, labels, newsletter, student_id
from flows.intake import intake_lines
from flows.labels import COLUMNS, COUNTS_ONLY, FLOW_COUNTS, LABELS
from flows.registry import FLOWS
from models.consent import ConsentState
from models.db import transaction
from models.erasure import TaskState, Urgency
from models.types import utcnow

from support import TEST_KEY

pytestmark = pytest.mark.usefixtures("prefect_harness")
FLOWS_DIR = Path(newsletter.__file__).parent
WAS, WHAT, COUNT = COLUMNS


# the catalogue ------------------------------------------------------------------------------
def test_every_key_has_a_german_and_an_english_label():
    for key, label in LABELS.items():
        assert key == key.strip() and key, key
        assert isinstance(label, labels.Label), key
        for text in label:
            assert isinstance(text, str) and text.strip() == text and text, (key, label)
    # Both columns tell the counts apart: no two keys read the same in either language.
    for language in ("de", "en"):
        texts = [getattr(label, language) for label in LABELS.values()]
        assert len(set(texts)) == len(texts), [t for t in texts if texts.count(t) > 1]


def test_every_flow_lists_only_labelled_keys_once_and_is_a_real_flow():
    assert set(FLOW_COUNTS) <= set(FLOWS)
    for flow_key, keys in FLOW_COUNTS.items():
        assert keys and len(set(keys)) == len(keys), flow_key
        assert set(keys) <= set(LABELS), (flow_key, set(keys) - set(LABELS))


def test_every_flow_that_publishes_counts_has_its_list():
    published = set()
    for path in sorted(FLOWS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and _name(node.func) in ("counts_artifact", "_report") and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    published.add(first.value)
    assert published and published == set(FLOW_COUNTS), published ^ set(FLOW_COUNTS)


def test_rows_list_the_flows_counts_in_order_with_zeros_then_any_other_key_as_is():
    rows = labels.table("purge-video-chat-data", {"chat_purged": 2, "due": 3, "pushed": 1, "zz_new": 4})
    assert [row[COUNT] for row in rows] == [3, 2, 0, 1, 4]
    assert rows[0] == {
        WAS: "Zur Löschung fällige Videoberatungen",
        WHAT: "Video consultations due for deletion",
        COUNT: 3,
    }
    assert rows[2][WAS] == LABELS["purge_not_verified"].de
    assert rows[3][WHAT] == LABELS["pushed"].en  # known, not in this flow's list: still shown, labelled
    assert rows[4] == {WAS: "zz_new", WHAT: "zz_new", COUNT: 4}  # unknown: shown under its key
    # Enum keys (the erasure flows count TaskState / Urgency members) read like their values.
    assert labels.table("watch-erasure-deadlines", {Urgency.overdue: 1})[2][COUNT] == 1
    assert [row[WAS] for row in labels.table("no-such-flow", {})] == []


# the keys the flows count -----------------------------------------------------------------
# Keys the flows compute rather than spell out: the expression, as ast.unparse gives it, and
# every key it can take. A new computed key fails the test below until it is listed here
# (and labelled).
COMPUTED: dict[str, set[str]] = {
    # newsletter: a change that is not sent, by its consent state
    "f'not_pushed_{row.state}'": {f"not_pushed_{s}" for s in ConsentState if s != ConsentState.confirmed},
    # student ID: a card not yet ACTIVE, by the issuer's card status (PENDING, ACTIVE, VOIDED)
    "f\"still_{str(card['status']).lower()}\"": {"still_pending", "still_voided"},
    # erasure: task states and urgencies
    "str(outcome.state)": {s.value for s in TaskState},
    "TaskState.restricted.value": {TaskState.restricted.value},
    "TaskState.manual_pending.value": {TaskState.manual_pending.value},
    "str(request.urgency)": {u.value for u in Urgency},
    # student ID's _Batch.decide(action, outcome, order, count): its calls are read below
    "count or outcome": set(),
    # bookings' _Batch.note(counted, action, …): its calls are read below
    "counted": set(),
}


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _literal_first(call: ast.Call) -> bool:
    """A call whose first argument is a string: bookings' ``note("pushed", …)``, not
    another function of that name."""
    return bool(call.args) and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)


def _strings(node: ast.AST) -> set[str] | None:
    """The strings a key expression can be: a literal, or either branch of ``a if c else b``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        body, orelse = _strings(node.body), _strings(node.orelse)
        if body is not None and orelse is not None:
            return body | orelse
    return None


def counted_keys() -> tuple[dict[str, set[str]], set[str]]:
    """Every key the flows' source counts, by module; and the computed keys' expressions.

    A count is a store into a mapping named ``counts`` (``counts[k] += 1``, ``batch.counts[k]
    = n``), the key of a ``decide(action, outcome, order[, count])`` call (student ID), or the
    first argument of a ``note(counted, action, …)`` call (bookings).
    """
    found: dict[str, set[str]] = {}
    computed: set[str] = set()
    for path in sorted(FLOWS_DIR.glob("*.py")):
        keys: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store) and _name(node.value) == "counts":
                key = node.slice
            elif isinstance(node, ast.Call) and _name(node.func) == "decide" and len(node.args) >= 2:
                given = [k.value for k in node.keywords if k.arg == "count"]
                key = node.args[3] if len(node.args) > 3 else given[0] if given else node.args[1]
            elif isinstance(node, ast.Call) and _name(node.func) == "note" and _literal_first(node):
                key = node.args[0]
            else:
                continue
            strings = _strings(key)
            if strings is None:
                computed.add(ast.unparse(key))
                strings = COMPUTED.get(ast.unparse(key), set())
            keys |= strings
        if keys:
            found[path.stem] = keys
    return found, computed


def test_no_key_a_flow_counts_is_missing_from_the_catalogue():
    found, computed = counted_keys()
    assert {"newsletter", "bookings", "student_id", "erasure"} <= set(found), found
    assert not computed - set(COMPUTED), f"computed count keys to list in COMPUTED: {computed - set(COMPUTED)}"
    every = set().union(*found.values())
    # Not vacuous: the brief's examples are among them.
    assert {"not_pushed_pending", "purge_not_verified", "remove_failed", "manual_pending", "due_soon"} <= every
    missing = {module: sorted(keys - set(LABELS)) for module, keys in found.items() if keys - set(LABELS)}
    assert not missing, f"count keys without a label in flows/labels.py: {missing}"
    # And the catalogue names nothing that no flow counts any more.
    assert not set(LABELS) - every, f"labels no flow counts: {sorted(set(LABELS) - every)}"


def test_what_a_sync_returns_is_labelled_and_unchanged(against_sandbox):
    lines = [
        json.dumps(
            {
                "type": "consent.signup",
                "list": "newsletter",
                "email": "pending@example.de",
                "salutation": "Frau",
                "first_name": "Erika",
                "last_name": "Muster",
                "ip": "192.0.2.10",
                "at": (utcnow() - timedelta(hours=1)).isoformat(),
                "source": "https://example.de/nl",
                "policy_version": "2026-01",
            }
        )
    ]
    with transaction() as session:
        assert [r.outcome for r in intake_lines(session, TEST_KEY.encode(), lines, now=utcnow())] == ["stored"]
    state = newsletter.sync_newsletter_consents(return_state=True)
    counts = state.result()
    assert counts == {"not_pushed_pending": 1}  # the returned dict: only what occurred, raw keys
    rows = _rows(state, "sync-newsletter-consents")
    assert {
        WAS: "Nicht gesendet: Anmeldung noch unbestätigt",
        WHAT: "Not sent: sign-up not yet confirmed",
        COUNT: 1,
    } in rows
    assert {WAS: LABELS["pushed"].de, WHAT: LABELS["pushed"].en, COUNT: 0} in rows
    assert [row[WAS] for row in rows] == [LABELS[k].de for k in FLOW_COUNTS["sync-newsletter-consents"]]


# a real run's artifact -----------------------------------------------------------------------
def _artifact(state, flow_key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    run = state.state_details.flow_run_id
    found = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run]), key=ArtifactFilterKey(any_=[flow_key]))
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=found)
    return artifact


def _rows(state, flow_key: str) -> list[dict]:
    data = _artifact(state, flow_key).data
    return json.loads(data) if isinstance(data, str) else data


@pytest.mark.parametrize(
    ("flow_key", "run", "returned"),
    [
        ("expire-unconfirmed-optins", lambda: newsletter.expire_unconfirmed_optins(return_state=True), {}),
        (
            "purge-video-chat-data",
            lambda: bookings.purge_video_chat_data(as_of=date(2026, 5, 4), return_state=True),
            {"due": 0},
        ),
        (
            "purge-student-id-documents",
            lambda: student_id.purge_student_id_documents(as_of=date(2026, 5, 4), return_state=True),
            {},
        ),
        (
            "watch-erasure-deadlines",
            lambda: erasure.watch_erasure_deadlines(as_of=date(2026, 5, 4), return_state=True),
            {},
        ),
    ],
)
def test_a_run_with_nothing_to_do_shows_every_count_as_0(settings, flow_key, run, returned):
    state = run()
    assert state.is_completed(), state
    assert state.result() == returned  # what the CLI prints and the other tests assert stays as it was
    artifact = _artifact(state, flow_key)
    rows = _rows(state, flow_key)
    assert rows == [{WAS: LABELS[key].de, WHAT: LABELS[key].en, COUNT: 0} for key in FLOW_COUNTS[flow_key]]
    assert COUNTS_ONLY in artifact.description
    assert artifact.description.startswith("# ")
