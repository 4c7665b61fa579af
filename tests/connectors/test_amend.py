"""Every API connector's AMENDER (connectors/amend.py) against `responses`: what it reads,
exactly what it sends, what it refuses before any call."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import responses
from responses import matchers

from connectors import amend, cleverreach, flexperto, isic, nect, timify
from connectors.amend import Holder
from connectors.transport import RetryPolicy
from core import catalogue
from core.settings import CleverReachSettings

SID = uuid.UUID("0b7c2f6e-3a51-4c7e-9a2d-5f1e8b6c4d21")
SETTINGS = SimpleNamespace(cleverreach=CleverReachSettings(group_newsletter="240803", group_service_offers="2"))
RECORDED = Path(__file__).parent / "recorded" / "cleverreach"


def holder(processor: str, purpose: str, external_id: str | None = None, **kw) -> Holder:
    return Holder(processor, purpose, external_id, SID, "ab" * 16, kw.pop("email", None), settings=SETTINGS, **kw)


def body(call) -> dict:
    return json.loads(call.request.body)


def test_every_api_processor_declares_an_amender_and_manual_ones_none():
    for key in catalogue.api_processors():
        found = amend.amender(key)
        assert found is not None and found.processor == key
    assert amend.amender("usu") is None and amend.amender("emilie") is None and amend.amender("nobody") is None


@pytest.mark.parametrize(
    ("processor", "purpose", "expected"),
    [
        ("cleverreach", "consent:newsletter", {"email", "salutation", "first_name", "last_name"}),
        ("timify", "booking", {"email", "salutation", "first_name", "last_name", "phone", "birth_date"}),
        ("flexperto", "video:B-1", {"email", "phone"}),
        ("isic", "student-id:O-1", {"email", "first_name", "last_name", "birth_date"}),
        ("nect", "ident:c-1", set()),
    ],
)
def test_only_what_the_allow_list_permits_may_be_corrected(processor, purpose, expected):
    found = amend.amender(processor)
    assert found is not None
    assert amend.permitted(processor, purpose, found.names) == expected


# CleverReach ----------------------------------------------------------------------------
CR = "https://cr.test"
API = f"{CR}/v3/groups.json/240803/receivers"


@pytest.fixture
def cr():
    responses.post(f"{CR}/oauth/token.php", json={"access_token": "T1", "expires_in": 3600})
    return cleverreach.CleverReach.connect(CR, "id", "secret", policy=RetryPolicy(2))


def recorded_receiver(**changes) -> dict:
    found = json.loads((RECORDED / "recipientInfo.json").read_text())
    return {**found, **changes}


@responses.activate
def test_cleverreach_reads_the_recorded_receiver_under_our_names(cr):
    responses.get(f"{API}/4285", json=recorded_receiver())
    held = cleverreach.AMENDER.read(cr, holder("cleverreach", "consent:newsletter", "4285"))
    # Its phone and birthday attributes exist (empty) but are not ours to touch.
    assert held == {"email": "ivan.bojovic@test.com", "salutation": "Mr", "first_name": "Ivan", "last_name": "Bojovic"}


@responses.activate
def test_cleverreach_corrects_the_address_in_place_by_receiver_id(cr):
    # No id in the register: found by the old address, then updated by its id.
    responses.get(f"{API}/old%40example.de", json=recorded_receiver(email="old@example.de"))
    update = responses.put(
        f"{API}/4285",
        json=recorded_receiver(email="new@example.de"),
        match=[
            matchers.json_params_matcher(
                {"email": "new@example.de", "global_attributes": {"firstname": "Iva"}}, strict_match=True
            )
        ],
    )
    target = holder("cleverreach", "consent:newsletter", email="old@example.de", new_email="new@example.de")
    cleverreach.AMENDER.update(cr, target, {"email": "new@example.de", "first_name": "Iva"})
    assert update.call_count == 1


@responses.activate
def test_cleverreach_finds_the_receiver_under_the_new_address_on_a_repeat(cr):
    responses.get(f"{API}/old%40example.de", status=404)
    responses.get(f"{API}/new%40example.de", json=recorded_receiver(email="new@example.de"))
    target = holder("cleverreach", "consent:newsletter", email="old@example.de", new_email="new@example.de")
    assert cleverreach.AMENDER.read(cr, target)["email"] == "new@example.de"


@responses.activate
def test_cleverreach_refuses_a_field_it_may_not_get_before_any_call(cr):
    with pytest.raises(ValueError, match="field phone cannot be corrected at CleverReach"):
        cleverreach.AMENDER.update(cr, holder("cleverreach", "consent:newsletter", "4285"), {"phone": "+4930"})
    assert len(responses.calls) == 0


@responses.activate
def test_cleverreach_deactivates_and_verifies(cr):
    responses.get(f"{API}/4285", json=recorded_receiver())
    responses.put(f"{API}/4285/deactivate", json=True)
    responses.get(f"{API}/4285", json=recorded_receiver(active=False, deactivated=1700000000))
    assert cleverreach.AMENDER.deactivate(cr, holder("cleverreach", "consent:newsletter", "4285")) is True


@responses.activate
def test_cleverreach_reactivation_keeps_the_double_opt_in_time(cr):
    confirmed = 1537774206
    responses.get(f"{API}/4285", json=recorded_receiver(active=False, deactivated=1700000000))
    responses.put(f"{API}/4285/activate", json=True)
    # The activation stamped a new time: the confirmation time is written back.
    responses.get(f"{API}/4285", json=recorded_receiver(activated=1800000000))
    restore = responses.post(
        f"{API.rsplit('/', 1)[0]}/receivers/upsertplus",
        json=[recorded_receiver()],
        match=[matchers.json_params_matcher([{"email": "ivan.bojovic@test.com", "activated": confirmed}])],
    )
    responses.get(f"{API}/4285", json=recorded_receiver())
    assert cleverreach.AMENDER.reactivate(cr, holder("cleverreach", "consent:newsletter", "4285")) is True
    assert restore.call_count == 1


# TIMIFY ---------------------------------------------------------------------------------
TM = "https://timify.test"
FIELDS = {
    "data": [
        {"id": "f-email", "translationKey": "customerFields.basic.email"},
        {"id": "f-first", "translationKey": "customerFields.basic.firstName"},
        {"id": "f-last", "translationKey": "customerFields.basic.lastName"},
        {"id": "f-phone", "translationKey": "customerFields.basic.mobilePhone"},
        {"id": "f-birthday", "translationKey": "customerFields.basic.birthday"},
        {"id": "f-salutation", "translationKey": "customerFields.basic.salutation"},
        {"id": "f-kvnr", "translationKey": None, "label": "Krankenversichertennummer"},
    ],
    "status": 1,
}


@pytest.fixture
def tm():
    responses.post(f"{TM}/v1/auth/token", json={"accessToken": "T1", "expires": 3600})
    responses.get(f"{TM}/v1/customers/customfields", json=FIELDS)
    return timify.Timify.connect(TM, "app", "secret", "c0", policy=RetryPolicy(2))


CUSTOMER = {
    "id": "t-1",
    "externalId": str(SID),
    "customfields": [
        {"id": "f-email", "value": "old@example.de"},
        {"id": "f-phone", "value": "+4930111"},
        {"id": "f-kvnr", "value": "A123456780"},
    ],
}


@responses.activate
def test_timify_reads_only_what_it_holds_and_patches_only_what_changed(tm):
    responses.get(f"{TM}/v1/customers/t-1", json={"data": CUSTOMER, "status": 1})
    target = holder("timify", "booking", "t-1")
    # With an insurance number given, TIMIFY holds no birth date: nothing to correct there.
    assert timify.AMENDER.read(tm, target) == {"email": "old@example.de", "phone": "+4930111"}
    patch = responses.patch(
        f"{TM}/v1/customers/t-1",
        json={"data": {"id": "t-1"}, "status": 1},
        match=[matchers.json_params_matcher({"customfields": [{"id": "f-phone", "value": "+4930222"}]})],
    )
    timify.AMENDER.update(tm, target, {"phone": "+4930222"})
    assert patch.call_count == 1


@responses.activate
def test_timify_cannot_restrict_and_says_so(tm):
    assert timify.AMENDER.can_deactivate is False
    with pytest.raises(NotImplementedError):
        timify.AMENDER.deactivate(tm, holder("timify", "booking", "t-1"))


# Flexperto ------------------------------------------------------------------------------
FX = "https://mkk.live.flexperto.test/api/v2"


@pytest.fixture
def fx():
    responses.post(f"{FX}/oauth/token", json={"access_token": "F1", "expires_in": 3600})
    return flexperto.Flexperto.connect(FX.rsplit("/api/v2", 1)[0], "cid", "secret", policy=RetryPolicy(2))


@responses.activate
def test_flexperto_patches_contact_data_only(fx):
    customer = {"id": "cus_1", "external_id": "B-1", "email": "old@example.de", "phone": "+4930111"}
    responses.get(f"{FX}/customers", json={"items": [customer]})
    target = holder("flexperto", "video:B-1")
    assert flexperto.AMENDER.read(fx, target) == {"email": "old@example.de", "phone": "+4930111"}
    patch = responses.patch(
        f"{FX}/customers/cus_1",
        json={**customer, "email": "new@example.de"},
        match=[matchers.json_params_matcher({"email": "new@example.de"}, strict_match=True)],
    )
    flexperto.AMENDER.update(fx, target, {"email": "new@example.de"})
    assert patch.call_count == 1
    with pytest.raises(ValueError, match="field last_name cannot be corrected at Flexperto"):
        flexperto.AMENDER.update(fx, target, {"last_name": "Neu"})


# ISIC -----------------------------------------------------------------------------------
IS = "https://isic.test/isic"
HOLDER = {
    "cardholderId": "O-1",
    "firstName": "Lena",
    "lastName": "Muster",
    "dateOfBirth": "2004-02-29",
    "email": "old@example.de",
    "institutionName": "TU Berlin",
    "studentStatus": "student",
    "hasPhoto": True,
}


@pytest.fixture
def ic():
    responses.post(f"{IS}/auth/token", json={"accessToken": "I1", "tokenType": "Bearer", "expiresIn": 300})
    return isic.Isic.connect(IS, "cid", "secret", policy=RetryPolicy(2))


@responses.activate
def test_isic_sends_the_whole_cardholder_with_the_corrections(ic):
    responses.post(f"{IS}/cardholders.get", json=HOLDER)
    target = holder("isic", "student-id:O-1")
    assert isic.AMENDER.read(ic, target) == {
        "first_name": "Lena",
        "last_name": "Muster",
        "birth_date": "2004-02-29",
        "email": "old@example.de",
    }
    expected = {k: v for k, v in HOLDER.items() if k != "hasPhoto"} | {"lastName": "Neu", "dateOfBirth": "2004-03-01"}
    put = responses.post(
        f"{IS}/cardholders.set", json=expected, match=[matchers.json_params_matcher(expected, strict_match=True)]
    )
    isic.AMENDER.update(ic, target, {"last_name": "Neu", "birth_date": "2004-03-01"})
    assert put.call_count == 1


@responses.activate
def test_isic_birth_dates_with_a_time_part_compare_as_dates_and_a_bad_one_is_not_repeated(ic):
    responses.post(f"{IS}/cardholders.get", json={**HOLDER, "dateOfBirth": "2004-02-29T00:00:00+00:00"})
    target = holder("isic", "student-id:O-1")
    assert isic.AMENDER.read(ic, target)["birth_date"] == "2004-02-29"
    responses.replace(responses.POST, f"{IS}/cardholders.get", json={**HOLDER, "dateOfBirth": "29.02.2004"})
    with pytest.raises(ValueError) as refused:
        isic.AMENDER.read(ic, target)
    assert "2004" not in str(refused.value) and "dateOfBirth" in str(refused.value)


# Nect -----------------------------------------------------------------------------------
def test_nect_holds_nothing_to_correct():
    assert nect.AMENDER.names == {} and nect.AMENDER.can_deactivate is False
    nect.AMENDER.update(None, holder("nect", "ident:c-1", "c-1"), {})
    with pytest.raises(ValueError):
        nect.AMENDER.update(None, holder("nect", "ident:c-1", "c-1"), {"email": "x@example.de"})
