"""The officer's erasure form in the Prefect UI, and keeping what is typed into it out of
Prefect's stored flow runs.

Prefect stores a run's parameters when the run is created, before any code of ours runs,
and keeps them as long as the run. So the form's fields are plain bounded text: the API
refuses a value outside the schema (``enforce_parameter_schema``) before storing it, and
inside the run nothing can fail Prefect's own validation before the body has replaced the
identifiers by the request id (``forget``). What the body cannot reach (a run scheduled for
later, cancelled before it started, or crashed) the follow-up finds (``tidy_stale_runs``).

Each identifier is a plain text field, empty when not given: the UI then shows a text box,
not a "None" switch.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, datetime, time
from typing import Annotated, Any

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.runtime import flow_run
from prefect.states import Cancelled
from pydantic import BeforeValidator, Field

from flows.common import reason
from models.erasure import Channel
from models.types import BERLIN

FLOW_NAME = "fan-out-erasure"
# The fields that can hold personal data: blanked from every stored run. A reference is
# checked to hold none, but one that was refused for holding a name must not stay either.
PERSONAL = ("email", "insurance_number", "subject_id", "reference")
ONE_OF = "Give at least one of e-mail, insurance number, subject id (all must be the same person)."

UUID_PATTERN = r"^$|^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
# A capital letter and nine digits (the last a check digit); spaces allowed, as printed on
# the card (A 123 456 789 0). The check digit itself is checked in the run.
INSURANCE_PATTERN = r"^$|^ *[A-Za-z]( *[0-9]){9} *$"
# A Berlin date, optionally with a time: 2026-11-20, 2026-11-20 14:30, 2026-11-20T14:30:05
# (an explicit offset is taken as given).
RECEIVED_PATTERN = r"^$|^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?( ?(Z|[+-]\d{2}:?\d{2}))?$"


def as_text(value: Any) -> str:
    """Whatever a caller passes (None, a UUID, a datetime, an enum) as the form's text.

    Never fails: a failure here would come before the flow forgets the identifiers.
    """
    if value is None:
        return ""
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(getattr(value, "value", value))


def field(title: str, **schema: Any) -> Any:
    """A form field: a readable title and bounds the form shows and the API enforces.

    The bounds live in the JSON schema only (``json_schema_extra``); the run checks the
    same things itself after forgetting the identifiers, so a value outside them is refused
    at the door by the API, and in a direct call by the flow, never by Prefect's validation.
    """
    return Field(json_schema_extra={"title": title, "type": "string", **schema})


Text = Annotated[str, BeforeValidator(as_text)]
CHANNELS = [c.value for c in Channel]


# parsing inside the run --------------------------------------------------------------------
def parse_uuid(text: str, what: str) -> uuid.UUID | None:
    """The id typed in, or None when empty; ValueError naming the field (not the value)."""
    text = text.strip()
    if not text:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ValueError(f"{what} is not an id of the form 8-4-4-4-12 hex digits") from None


def parse_received_at(text: str, now: datetime) -> datetime:
    """When the request reached us, read as Berlin time; empty means now.

    >>> parse_received_at("2026-11-20 14:30", datetime(2026, 12, 1, tzinfo=BERLIN)).isoformat()
    '2026-11-20T14:30:00+01:00'
    >>> parse_received_at("2026-07-01", datetime(2026, 12, 1, tzinfo=BERLIN)).isoformat()
    '2026-07-01T00:00:00+02:00'
    """
    text = text.strip()
    if not text:
        return now
    if not re.fullmatch(RECEIVED_PATTERN, text):
        raise ValueError("received_at is not a date (2026-11-20) or date and time (2026-11-20 14:30)")
    try:
        value = datetime.fromisoformat(text.replace(" Z", "Z").replace(" +", "+").replace(" -", "-"))
    except ValueError:
        raise ValueError("received_at is not a valid calendar date and time") from None
    if len(text) == 10:  # a date alone: the start of that Berlin day
        value = datetime.combine(value.date(), time(0))
    return value if value.tzinfo is not None else value.replace(tzinfo=BERLIN)


def parse_channel(text: str) -> Channel:
    try:
        return Channel(text.strip())
    except ValueError:
        raise ValueError(f"channel must be one of {', '.join(CHANNELS)}") from None


def has_identifiers(parameters: Mapping[str, Any], personal: Sequence[str] = PERSONAL) -> bool:
    """Whether a stored run's parameters still hold anything typed into a personal field."""
    return any(parameters.get(name) not in (None, "") for name in personal)


def blanked(
    parameters: Mapping[str, Any], request_id: uuid.UUID | None, personal: Sequence[str] = PERSONAL
) -> dict[str, Any]:
    """The parameters with every personal field empty and the request id (if any) in place,
    so a retry of the run resumes that request."""
    kept = dict(parameters)
    kept.update(dict.fromkeys(personal, ""))
    if request_id is not None:
        kept["request_id"] = str(request_id)
    return kept


# the run's own parameters ------------------------------------------------------------------
def forget(request_id: uuid.UUID | None, personal: Sequence[str] = PERSONAL) -> None:
    """Blank the personal fields in this run's stored parameters; keep the request id.

    Called whether the request was opened, joined, resumed or refused. Another form flow
    (``flows.rights``) names its own `personal` fields.
    """
    if not flow_run.id:
        return
    with get_client(sync_client=True) as client:
        parameters = client.read_flow_run(flow_run.id).parameters
        client.update_flow_run(flow_run.id, parameters=blanked(parameters, request_id, personal))


# runs the body never reached ---------------------------------------------------------------
NOT_STARTED = (StateType.SCHEDULED, StateType.PENDING, StateType.PAUSED)
ENDED_EARLY = (StateType.CANCELLED, StateType.CRASHED, StateType.FAILED)
PAGE = 200


def _runs(client: SyncPrefectClient, flow_name: str = FLOW_NAME) -> Iterator[FlowRun]:
    """Every run of the form flow that is not running and not completed, page by page."""
    flows = FlowFilter(name=FlowFilterName(any_=[flow_name]))
    states = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[*NOT_STARTED, *ENDED_EARLY])))
    offset = 0
    while True:
        page = client.read_flow_runs(flow_filter=flows, flow_run_filter=states, limit=PAGE, offset=offset)
        yield from page
        if len(page) < PAGE:
            return
        offset += PAGE


def tidy_stale_runs(
    open_from_form: Callable[[Mapping[str, Any]], uuid.UUID],
    flow_name: str = FLOW_NAME,
    personal: Sequence[str] = PERSONAL,
) -> dict[str, int]:
    """Blank the identifiers in every run of the form flow `flow_name` (fan-out-erasure, or
    another form flow with its own `personal` fields) that still holds them.

    - A run not started yet (scheduled for later, late, pending), or one that crashed or
      failed before its body forgot them: the request it was filed for is opened (or the
      subject's open one joined) with ``open_from_form``, and the run keeps only its id, so
      when it starts, or is retried, it resumes that request. The deadline counts from
      receipt anyway.
    - A run cancelled before it started: the officer took it back; blanked, nothing opened.
    - A request the form cannot open (unknown person, a personal reference): blanked; a run
      not started yet is cancelled, with the reason as its message.

    Returns counts by what was done; never names a person.
    """
    counts = {"opened": 0, "blanked": 0, "refused": 0}
    with get_client(sync_client=True) as client:
        stale = [run for run in _runs(client, flow_name) if has_identifiers(run.parameters, personal)]
        for run in stale:
            kind = run.state.type if run.state else StateType.CANCELLED
            request_id = None
            why = ""
            if kind != StateType.CANCELLED:
                try:
                    request_id = open_from_form(run.parameters)
                except (ValueError, LookupError) as exc:  # our checks: they name no value
                    why = reason(exc)
            client.update_flow_run(run.id, parameters=blanked(run.parameters, request_id, personal))
            if request_id is not None:
                counts["opened"] += 1
            elif why:
                counts["refused"] += 1
                if kind == StateType.SCHEDULED:
                    client.set_flow_run_state(run.id, Cancelled(message=f"request refused: {why}"), force=True)
            else:
                counts["blanked"] += 1
    return counts
