"""TIMIFY connector against `responses` and the answers recorded from its API (recorded/timify)."""

from __future__ import annotations

import doctest
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import requests
import responses
from responses import matchers

import connectors.timify
from connectors.timify import (
    ALLOWED_FIELDS,
    Timify,
    berlin_start,
    check_allowed,
    from_settings,
    one_identifier,
    parse_utc,
)
from connectors.transport import FatalError, RetriableError, RetryPolicy
from core.settings import get_settings

ROOT = "https://timify.test"
COMPANY = "65aea871f011c03363aefdb3"
RECORDED = Path(__file__).parent / "recorded" / "timify"
CUSTOMERS = f"{ROOT}/v1/customers"
APPOINTMENTS = f"{ROOT}/v1/appointments"
FIELDS_URL = f"{CUSTOMERS}/customfields"
UTC = UTC


def recorded(name: str):
    return json.loads((RECORDED / name).read_text())


def definition(fid: str, translation_key: str | None, label: str | None = None) -> dict:
    return {"id": fid, "type": "TEXT", "translationKey": translation_key, "label": label}


def all_fields() -> dict:
    """The recorded fields plus the ones we assume the company has configured."""
    body = recorded("customer-fields.json")
    body["data"] += [
        definition("f-phone", "customerFields.basic.mobilePhone"),
        definition("f-birthday", "customerFields.basic.birthday"),
        definition("f-salutation", "customerFields.basic.salutation"),
        definition("f-kvnr", None, "Krankenversichertennummer"),
    ]
    return body


EMAIL_ID = "65c39ebd07a04b9210cccb96"


def ok(data) -> dict:
    return {"data": data, "status": 1}


def sent(call) -> dict:
    return json.loads(call.request.body)


def calls_to(method: str, url: str) -> list:
    return [c for c in responses.calls if c.request.method == method and c.request.url.split("?")[0] == url]


@pytest.fixture
def tm():
    responses.post(
        f"{ROOT}/v1/auth/token",
        json={"accessToken": "T1", "expires": 3600, "refreshToken": "R1"},
        match=[matchers.json_params_matcher({"appid": "app", "appsecret": "s3cret"})],
    )
    return Timify.connect(ROOT, "app", "s3cret", COMPANY, policy=RetryPolicy(3))


# auth and envelope ---------------------------------------------------------------------
@responses.activate
def test_raw_token_and_company_id_on_every_call(tm):
    responses.get(f"{CUSTOMERS}/c1", json=ok({"id": "c1"}))
    assert tm.get_customer("c1") == {"id": "c1"}
    token_call, call = responses.calls
    assert call.request.headers["authorization"] == "T1"  # raw, no "Bearer "
    assert call.request.headers["company-id"] == COMPANY
    assert token_call.request.headers["company-id"] == COMPANY


@responses.activate
def test_401_fetches_exactly_one_new_token(tm):
    responses.post(f"{ROOT}/v1/auth/token", json={"accessToken": "T2", "expires": 3600})
    responses.get(f"{CUSTOMERS}/c1", status=401)
    responses.get(f"{CUSTOMERS}/c1", json=ok({"id": "c1"}))
    assert tm.get_customer("c1") == {"id": "c1"}
    assert len(calls_to("POST", f"{ROOT}/v1/auth/token")) == 2
    assert [c.request.headers["authorization"] for c in calls_to("GET", f"{CUSTOMERS}/c1")] == ["T1", "T2"]


@responses.activate
def test_status_other_than_1_on_a_2xx_is_fatal_and_quotes_no_message(tm):
    error = {"status": 0, "error": {"code": "InvalidValue", "message": "erika@example.de invalid"}}
    responses.get(f"{CUSTOMERS}/c1", json=error)
    with pytest.raises(FatalError) as info:
        tm.get_customer("c1")
    assert "InvalidValue" in info.value.reason
    assert "erika" not in str(info.value) and "erika" not in info.value.reason


@responses.activate
def test_a_create_answered_with_status_0_is_not_looked_up(tm):
    responses.get(FIELDS_URL, json=all_fields())
    responses.post(CUSTOMERS, json={"status": 0, "error": {"code": "Validation"}})
    with pytest.raises(FatalError):
        tm.upsert_customer("p-1", {"email": "a@example.de"})
    assert len(calls_to("POST", CUSTOMERS)) == 1
    assert calls_to("PATCH", f"{CUSTOMERS}/p-1") == []


@responses.activate
def test_no_personal_data_in_errors(tm, no_sleep):
    responses.get(f"{CUSTOMERS}/erika%40example.de", status=503)
    with pytest.raises(RetriableError) as info:
        tm.get_customer("erika@example.de", external=True)
    responses.get(FIELDS_URL, json=all_fields())
    responses.post(CUSTOMERS, status=400, json={"status": 0, "error": {"message": "erika@example.de"}})
    with pytest.raises(FatalError) as info2:
        tm.upsert_customer("p-1", {"email": "erika@example.de"})
    for exc in (info.value, info2.value):
        assert "erika" not in str(exc) and "example.de" not in str(exc)


# customer fields -----------------------------------------------------------------------
@responses.activate
def test_recorded_customer_fields_map_as_they_are(tm):
    responses.get(FIELDS_URL, json=recorded("customer-fields.json"))
    assert tm.field_ids() == {
        "email": EMAIL_ID,
        "first_name": "65c39ebd07a04b9210cccb98",
        "last_name": "65c39ebd07a04b9210cccb99",
    }


@responses.activate
def test_customfields_are_fetched_once_across_upserts(tm):
    responses.get(FIELDS_URL, json=all_fields())
    responses.post(CUSTOMERS, json=ok({"id": "t1"}))
    for i in range(3):
        tm.upsert_customer(f"p-{i}", {"email": f"r{i}@example.de", "first_name": "Erika"})
    assert len(calls_to("GET", FIELDS_URL)) == 1
    assert len(calls_to("POST", CUSTOMERS)) == 3


@responses.activate
def test_a_field_the_company_lacks_is_a_configuration_error(tm):
    responses.get(FIELDS_URL, json=recorded("customer-fields.json"))  # no insurance field
    with pytest.raises(FatalError, match="customfields.map") as info:
        tm.upsert_customer("p-1", {"email": "a@example.de", "insurance_number": "A123456780"})
    assert "insurance_number" in info.value.reason
    assert calls_to("POST", CUSTOMERS) == []


@responses.activate
def test_allow_list_refuses_before_any_request(tm):
    with pytest.raises(ValueError, match="concern"):
        tm.upsert_customer("p-1", {"email": "a@example.de", "concern": "Zahnersatz"})
    assert len(responses.calls) == 0  # not even the token


def test_allow_list_is_seed_001s_list():
    assert ALLOWED_FIELDS == {
        "salutation",
        "first_name",
        "last_name",
        "phone",
        "email",
        "insurance_number",
        "birth_date",
    }
    check_allowed(dict.fromkeys(ALLOWED_FIELDS, "x"))


@responses.activate
def test_insurance_number_or_birth_date_only_given_fields_are_sent(tm):
    responses.get(FIELDS_URL, json=all_fields())
    responses.post(CUSTOMERS, json=ok({"id": "t1"}))
    tm.upsert_customer("p-1", {"email": "a@example.de", "insurance_number": "A123456780", "birth_date": None})
    tm.upsert_customer("p-2", {"email": "b@example.de", "birth_date": date(1980, 5, 17)})
    first, second = (sent(c) for c in calls_to("POST", CUSTOMERS))
    assert first == {
        "externalId": "p-1",
        "customfields": [{"id": EMAIL_ID, "value": "a@example.de"}, {"id": "f-kvnr", "value": "A123456780"}],
    }
    assert second["customfields"] == [
        {"id": EMAIL_ID, "value": "b@example.de"},
        {"id": "f-birthday", "value": "1980-05-17"},
    ]


@responses.activate
def test_with_both_identifiers_given_only_the_insurance_number_is_sent(tm):
    # Seed 001: either identifies the customer; the number is unique, the birth date is not.
    responses.get(FIELDS_URL, json=all_fields())
    responses.post(CUSTOMERS, json=ok({"id": "t1"}))
    responses.patch(f"{CUSTOMERS}/t1", json=ok({"id": "t1"}))
    both = {"email": "a@example.de", "insurance_number": "A123456780", "birth_date": date(1980, 5, 17)}
    tm.upsert_customer("p-1", both)
    tm.upsert_customer("p-1", both, customer_id="t1")  # an update just the same
    bodies = [sent(c) for c in [*calls_to("POST", CUSTOMERS), *calls_to("PATCH", f"{CUSTOMERS}/t1")]]
    for body in bodies:
        assert body["customfields"] == [
            {"id": EMAIL_ID, "value": "a@example.de"},
            {"id": "f-kvnr", "value": "A123456780"},
        ]
        assert "1980" not in json.dumps(body)
    assert len(bodies) == 2
    assert both["birth_date"] == date(1980, 5, 17)  # the caller's mapping is left as it was


def test_one_identifier_keeps_the_birth_date_when_it_is_the_only_one():
    assert one_identifier({"insurance_number": None, "birth_date": date(1980, 5, 17)}) == {
        "insurance_number": None,
        "birth_date": date(1980, 5, 17),
    }
    assert one_identifier({"insurance_number": "", "birth_date": "1980-05-17"})["birth_date"] == "1980-05-17"
    assert one_identifier({"insurance_number": "A123456780", "birth_date": None}) == {"insurance_number": "A123456780"}


# idempotent create-or-update -----------------------------------------------------------
@responses.activate
def test_known_customer_is_patched_by_its_timify_id(tm):
    responses.get(FIELDS_URL, json=all_fields())
    responses.patch(f"{CUSTOMERS}/t1", json=ok({"id": "t1"}))
    assert tm.upsert_customer("p-1", {"phone": "+49301234567"}, customer_id="t1") == "t1"
    assert calls_to("POST", CUSTOMERS) == []
    assert sent(calls_to("PATCH", f"{CUSTOMERS}/t1")[0]) == {
        "customfields": [{"id": "f-phone", "value": "+49301234567"}]
    }


@responses.activate
def test_409_updates_by_external_id_and_creates_once(tm):
    responses.get(FIELDS_URL, json=all_fields())
    responses.post(CUSTOMERS, status=409, json={"status": 0, "error": {"code": "DuplicateExternalId"}})
    responses.patch(f"{CUSTOMERS}/p-1", json=ok({"id": "t1"}), match=[matchers.query_param_matcher({"external": "1"})])
    assert tm.upsert_customer("p-1", {"email": "a@example.de"}) == "t1"
    assert len(calls_to("POST", CUSTOMERS)) == 1
    (patch,) = calls_to("PATCH", f"{CUSTOMERS}/p-1")
    assert sent(patch) == {"customfields": [{"id": EMAIL_ID, "value": "a@example.de"}]}
    ops = [c.operation for c in tm.http.drain_calls()]
    assert ops == ["auth.token", "customfields.list", "customers.create", "customers.lookup"]


@responses.activate
def test_lost_create_answer_is_looked_up_not_resent(tm, no_sleep):
    responses.get(FIELDS_URL, json=all_fields())
    # A dropped connection on a POST: the layer cannot know whether it was applied.
    responses.post(CUSTOMERS, body=requests.exceptions.ConnectionError("reset"))
    responses.patch(f"{CUSTOMERS}/p-1", json=ok({"id": "t1"}))
    assert tm.upsert_customer("p-1", {"email": "a@example.de"}) == "t1"
    assert len(calls_to("POST", CUSTOMERS)) == 1
    assert no_sleep == []  # the layer did not retry the POST itself


@responses.activate
def test_lost_create_that_was_not_applied_is_sent_once_more(tm):
    responses.get(FIELDS_URL, json=all_fields())
    responses.post(CUSTOMERS, body=requests.exceptions.ReadTimeout("slow"))
    responses.post(CUSTOMERS, json=ok({"id": "t1"}))
    responses.patch(f"{CUSTOMERS}/p-1", status=404, json={"status": 0, "error": {"code": "NotFound"}})
    assert tm.upsert_customer("p-1", {"email": "a@example.de"}) == "t1"
    assert len(calls_to("POST", CUSTOMERS)) == 2
    assert len(calls_to("PATCH", f"{CUSTOMERS}/p-1")) == 1


@responses.activate
def test_a_server_error_on_create_is_looked_up_too(tm):
    responses.get(FIELDS_URL, json=all_fields())
    responses.post(CUSTOMERS, status=502)  # a gateway may have passed the create on
    responses.patch(f"{CUSTOMERS}/p-1", json=ok({"id": "t1"}))
    assert tm.upsert_customer("p-1", {"email": "a@example.de"}) == "t1"
    assert len(calls_to("POST", CUSTOMERS)) == 1


@responses.activate
def test_create_gives_up_after_the_policys_attempts(tm):
    responses.get(FIELDS_URL, json=all_fields())
    responses.post(CUSTOMERS, status=409)
    responses.patch(f"{CUSTOMERS}/p-1", status=404)
    with pytest.raises(FatalError) as info:
        tm.upsert_customer("p-1", {"email": "a@example.de"})
    assert info.value.status == 409 and "exists, but not found" in str(info.value)
    assert len(calls_to("POST", CUSTOMERS)) == tm.http.policy.max_attempts


@responses.activate
def test_a_create_answered_5xx_is_looked_up_and_retried_and_names_the_real_status(tm):
    """Each 503 may or may not have created it: looked up by our id, created again when not
    there, as often as the policy allows any call; the failure says 503, not "not found"."""
    responses.get(FIELDS_URL, json=all_fields())
    responses.post(CUSTOMERS, status=503)
    responses.patch(f"{CUSTOMERS}/p-1", status=404)
    with pytest.raises(RetriableError) as info:
        tm.upsert_customer("p-1", {"email": "a@example.de"})
    attempts = tm.http.policy.max_attempts
    assert info.value.status == 503 and "not found" not in str(info.value)
    assert len(calls_to("POST", CUSTOMERS)) == attempts == len(calls_to("PATCH", f"{CUSTOMERS}/p-1"))


@responses.activate
def test_a_create_whose_answer_was_lost_but_landed_is_found_not_made_twice(tm):
    responses.get(FIELDS_URL, json=all_fields())
    responses.post(CUSTOMERS, status=502)
    responses.patch(f"{CUSTOMERS}/p-1", json=ok({"id": "t7"}))
    assert tm.upsert_customer("p-1", {"email": "a@example.de"}) == "t7"
    assert len(calls_to("POST", CUSTOMERS)) == 1


@responses.activate
def test_a_refused_create_is_not_looked_up(tm):
    responses.get(FIELDS_URL, json=all_fields())
    responses.post(CUSTOMERS, status=400)
    with pytest.raises(FatalError) as info:
        tm.upsert_customer("p-1", {"email": "a@example.de"})
    assert info.value.status == 400
    assert calls_to("PATCH", f"{CUSTOMERS}/p-1") == []


# appointments --------------------------------------------------------------------------
@responses.activate
def test_appointment_create_body_in_berlin_time(tm):
    responses.post(APPOINTMENTS, json=ok({"id": "a1"}))
    start = datetime(2026, 3, 29, 8, 0, tzinfo=UTC)
    common = dict(service_id="s1", resource_ids=["r1"], start=start, duration_min=30, customer_id="t1")
    assert tm.upsert_appointment("b-1", **common) == "a1"
    tm.upsert_appointment("b-2", **common, notes="Zahnersatz")
    first, second = (sent(c) for c in calls_to("POST", APPOINTMENTS))
    assert first == {
        "externalId": "b-1",
        "service_id": "s1",
        "resource_ids": ["r1"],
        "startDate": "2026-03-29 10:00",
        "duration": 30,
        "customers": ["t1"],
    }
    assert second["notes"] == "Zahnersatz"


@responses.activate
def test_appointment_409_is_patched_by_external_id(tm):
    responses.post(APPOINTMENTS, status=409)
    responses.patch(
        f"{APPOINTMENTS}/b-1", json=ok({"id": "a1"}), match=[matchers.query_param_matcher({"external": "1"})]
    )
    start = datetime(2026, 5, 4, 9, 15, tzinfo=UTC)
    got = tm.upsert_appointment(
        "b-1", service_id="s1", resource_ids=["r1"], start=start, duration_min=30, customer_id="t1"
    )
    assert got == "a1" and len(calls_to("POST", APPOINTMENTS)) == 1
    assert "externalId" not in sent(calls_to("PATCH", f"{APPOINTMENTS}/b-1")[0])


@responses.activate
def test_recorded_appointment_parses_as_is(tm):
    responses.get(f"{APPOINTMENTS}/6601c37248e397683a4d4b73", json=recorded("appointment.json"))
    appointment = tm.get_appointment("6601c37248e397683a4d4b73")
    assert parse_utc(appointment["startDate"]) == datetime(2024, 4, 4, 7, 5, tzinfo=UTC)
    interval = appointment["bookings"][0]["interval"]
    assert parse_utc(interval["end"]) - parse_utc(interval["begin"]) == timedelta(minutes=appointment["duration"])
    assert appointment["resources"][0]["externalId"] == "1077"
    assert appointment["externalId"] == "" and appointment["customers"] == []


@responses.activate
def test_absent_records_are_none_and_deleting_them_is_done(tm):
    responses.get(f"{APPOINTMENTS}/gone", status=404, json={"status": 0, "error": {"code": "NotFound"}})
    responses.get(f"{CUSTOMERS}/p-9", status=404, match=[matchers.query_param_matcher({"external": "1"})])
    responses.delete(f"{CUSTOMERS}/t1", json=ok(None))
    responses.delete(f"{CUSTOMERS}/t2", status=404)
    assert tm.get_appointment("gone") is None
    assert tm.get_customer("p-9", external=True) is None
    assert tm.delete_customer("t1") is True
    assert tm.delete_customer("t2") is False


@responses.activate
def test_bulk_delete_in_chunks_of_100(tm):
    responses.post(f"{APPOINTMENTS}/delete/bulk", json=ok(None))
    assert tm.delete_appointments([f"a{i}" for i in range(250)]) == 250
    bodies = [sent(c) for c in calls_to("POST", f"{APPOINTMENTS}/delete/bulk")]
    assert [len(b["ids"]) for b in bodies] == [100, 100, 50]
    assert {b["has_notify_customers"] for b in bodies} == {False}
    assert [c.items for c in tm.http.drain_calls()][1:] == [100, 100, 50]


# pagination ----------------------------------------------------------------------------
def page(rows: list, page_no: int, limit: int, total_pages: int) -> dict:
    meta = {"page": page_no, "limit": limit, "totalItems": 99, "totalPages": total_pages}
    return {"data": rows, "total": len(rows), "meta": meta, "status": 1}


@responses.activate
def test_pages_are_1_based_and_stop_at_total_pages(tm):
    for n in (1, 2):
        responses.get(
            CUSTOMERS,
            json=page([{"id": f"c{n}a"}, {"id": f"c{n}b"}], n, 2, 2),
            match=[matchers.query_param_matcher({"page": str(n), "limit": "2"})],
        )
    ids = [c["id"] for c in tm.iter_customers(page_size=2)]
    assert ids == ["c1a", "c1b", "c2a", "c2b"]
    assert len(calls_to("GET", CUSTOMERS)) == 2  # full last page, yet no third request


@responses.activate
def test_pages_stop_on_an_empty_page(tm):
    full = {"data": [{"id": "a"}, {"id": "b"}], "status": 1}  # no meta at all
    responses.get(CUSTOMERS, json=full)
    responses.get(CUSTOMERS, json={"data": [], "status": 1})
    assert len(list(tm.iter_customers(page_size=2))) == 2
    assert len(calls_to("GET", CUSTOMERS)) == 2


@responses.activate
def test_a_page_short_of_a_server_capped_limit_is_not_the_end(tm):
    responses.get(CUSTOMERS, json=page([{"id": "a"}], 1, 1, 2))  # we asked 100, it gave 1
    responses.get(CUSTOMERS, json=page([{"id": "b"}], 2, 1, 2))
    assert [c["id"] for c in tm.iter_customers()] == ["a", "b"]


@responses.activate
def test_appointment_span_is_split_into_365_day_windows(tm):
    def window(frm: str, to: str, rows: list) -> None:
        responses.get(
            APPOINTMENTS,
            json=page(rows, 1, 100, 1),
            match=[matchers.query_param_matcher({"from_date": frm, "to_date": to, "page": "1", "limit": "100"})],
        )

    window("2025-01-01", "2026-01-01", [{"id": "x"}, {"id": "edge"}])
    window("2026-01-01", "2026-06-30", [{"id": "edge"}, {"id": "y"}])
    ids = [a["id"] for a in tm.iter_appointments(date(2025, 1, 1), date(2026, 6, 30))]
    assert ids == ["x", "edge", "y"]  # the shared boundary day yields its appointment once


# time ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "utc, local",
    [
        (datetime(2026, 3, 28, 9, 0), "2026-03-28 10:00"),  # CET, the day before the switch
        (datetime(2026, 3, 29, 8, 0), "2026-03-29 10:00"),  # CEST from 01:00 UTC
        (datetime(2026, 10, 25, 9, 0), "2026-10-25 10:00"),  # CET again from 01:00 UTC
    ],
)
def test_berlin_start_across_dst(utc, local):
    assert berlin_start(utc.replace(tzinfo=UTC)) == local


@pytest.mark.parametrize(
    "bad",
    [
        datetime(2026, 3, 29, 8, 3, tzinfo=UTC),
        datetime(2026, 3, 29, 8, 5, 30, tzinfo=UTC),
        datetime(2026, 3, 29, 8, 5, 0, 1, tzinfo=UTC),
        datetime(2026, 3, 29, 10, 0),  # naive
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # 02:30 happens twice that night
    ],
)
def test_berlin_start_refuses(bad):
    with pytest.raises(ValueError):
        berlin_start(bad)


@pytest.mark.parametrize(
    ("utc", "local"),
    [
        (datetime(2026, 10, 24, 23, 55), "2026-10-25 01:55"),  # the last minute before the repeat
        (datetime(2026, 10, 25, 2, 0), "2026-10-25 03:00"),  # the first one after it
        (datetime(2027, 3, 28, 0, 55), "2027-03-28 01:55"),  # before the skipped hour
        (datetime(2027, 3, 28, 1, 0), "2027-03-28 03:00"),  # 02:00-02:59 never happen
    ],
)
def test_berlin_start_next_to_a_switch(utc, local):
    assert berlin_start(utc.replace(tzinfo=UTC)) == local


@pytest.mark.parametrize(
    "instant",
    [
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # 02:30 CEST
        datetime(2026, 10, 25, 1, 30, tzinfo=UTC),  # 02:30 CET, an hour later
        datetime(2026, 10, 25, 0, 0, tzinfo=UTC),  # 02:00 CEST
        datetime(2026, 10, 25, 1, 55, tzinfo=UTC),  # 02:55 CET
        datetime.fromisoformat("2026-10-25T02:30:00+01:00"),  # as the website wrote it
    ],
)
def test_berlin_start_refuses_both_instants_of_the_repeated_hour(instant):
    with pytest.raises(ValueError, match="ambiguous in Berlin"):
        berlin_start(instant)


@pytest.mark.parametrize(
    "written", ["2026-10-25T02:30:00+02:00", "2026-10-25T02:30:00+01:00", "2026-12-03T10:32:00+01:00"]
)
def test_the_push_refuses_what_intake_refuses_in_the_same_words(written):
    """One check for both (core.clock.berlin_wall_clock): the intake's reason for a start
    is the push's, so no line intake takes in can be refused later and block the stream."""
    from intake.lines import parse_line

    line = json.dumps(
        {"type": "booking.reschedule", "booking_id": "B-1", "start": written, "at": "2026-03-20T09:00:00+01:00"}
    )
    with pytest.raises(ValueError) as intake:
        parse_line(line, {"now": datetime(2026, 3, 20, 8, 0, tzinfo=UTC)})
    with pytest.raises(ValueError) as push:
        berlin_start(datetime.fromisoformat(written).astimezone(UTC))  # as stored
    assert str(push.value).startswith("start ")
    assert str(intake.value) == str(push.value).replace("start ", "start: ", 1)


def test_the_examples_in_the_docstrings_hold():
    assert doctest.testmod(connectors.timify).failed == 0


def test_parse_utc():
    assert parse_utc("2024-04-04T07:05:00Z") == datetime(2024, 4, 4, 7, 5, tzinfo=UTC)
    assert parse_utc("2024-04-04T09:05:00+02:00").tzinfo == UTC
    with pytest.raises(ValueError):
        parse_utc("2024-04-04T07:05:00")


# settings ------------------------------------------------------------------------------
def test_from_settings_needs_credentials_and_company(settings, monkeypatch):
    monkeypatch.setenv("PSYNC_TIMIFY_APP_ID", "app")
    monkeypatch.setenv("PSYNC_TIMIFY_APP_SECRET", "s3cret")
    monkeypatch.delenv("PSYNC_TIMIFY_COMPANY_ID", raising=False)  # whatever conftest set
    get_settings.cache_clear()
    with pytest.raises(FatalError, match="configure"):
        from_settings(get_settings())
    monkeypatch.setenv("PSYNC_TIMIFY_COMPANY_ID", COMPANY)
    monkeypatch.setenv("PSYNC_TIMIFY_BASE_URL", ROOT + "/")
    get_settings.cache_clear()
    timify = from_settings(get_settings())
    assert timify.http.base_url == ROOT and timify.headers == {"company-id": COMPANY}
