"""The connector contract: what every API processor's connector does the same way.

One table row per API processor of the catalogue (a guard fails when one is missing); every
test runs for each row against the sandbox, over real HTTP:

- **One HTTP layer.** The module builds its client with ``from_settings`` over
  ``connectors.transport.HttpClient`` (session, auth, the one retry policy, the processor's
  rate limit, redaction); its eraser is declared under the catalogue's key.
- **Allow-list.** The module's allow-list is within what the catalogue lets the processor
  receive, and a field beyond it is refused before any call leaves.
- **Erase and verify.** A record the processor holds reads back as present, is erased
  (answered "verified" at once, or "awaiting" exactly when the eraser says the processor
  deletes asynchronously), then reads back absent; erasing it again is "verified"; a record
  the processor never got reads back absent.
- **Auth.** Wrong credentials end in a fatal 401 whose message names the processor and
  neither the secret nor the person.
- **Retries.** A processor that answers 503 to everything is asked exactly as often as the
  retry policy allows, then the failure is retriable: the next run tries again.

Ids in paths (percent-encoding) have their own suite, which covers every ``path(...)`` call in
``connectors/`` (``test_ids_in_paths.py``).
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

import pytest
import requests
from pydantic import SecretStr

from connectors.erasure import AWAITING, VERIFIED, Target
from connectors.transport import FatalError, HttpClient, RetriableError
from core import catalogue
from core.settings import get_settings
from models.identity import pseudonym

EMAIL = "vertrag.pruefung@example.de"
SUBJECT = uuid.UUID("0192f0c4-0000-7000-8000-00000000c0de")
PSEUDONYM = pseudonym(b"contract-key", "email", EMAIL)
ATTEMPTS = 3


def _target(processor: str, purpose: str, external_id: str | None = None, email: str | None = None) -> Target:
    return Target(processor, purpose, external_id, SUBJECT, PSEUDONYM, email, get_settings())


@dataclass(frozen=True)
class Contract:
    """How the suite drives one processor: `seed` puts one person's record there and returns
    the target naming it; `unknown` names one it never got; `refused` sends (or checks) a
    payload with one field beyond the allow-list; `secret` is the credential field of its
    settings group, spoilt for the auth test."""

    processor: str
    seed: Callable[[Any], Target]
    unknown: Callable[[], Target]
    refused: Callable[[Any], object]
    secret: str


def _module(processor: str) -> Any:
    return importlib.import_module(f"connectors.{processor}")


def _cleverreach_seed(client) -> Target:
    client.upsert("1001", "newsletter", [{"email": EMAIL}])
    return _target("cleverreach", "consent:newsletter", email=EMAIL)


def _timify_seed(client) -> Target:
    customer = client.upsert_customer(str(SUBJECT), {"email": EMAIL})
    return _target("timify", "booking", external_id=customer)


def _flexperto_seed(client) -> Target:
    client.upsert_customer("B-CONTRACT", EMAIL, None)
    return _target("flexperto", "video:B-CONTRACT")


def _isic_seed(client) -> Target:
    client.set_cardholder(
        "O-CONTRACT",
        first_name="Erika",
        last_name="Muster",
        date_of_birth=date(2004, 5, 17),
        email=EMAIL,
        institution="Universität Musterstadt",
        student_status="student",
    )
    return _target("isic", "student-id:O-CONTRACT")


def _nect_seed(client) -> Target:
    return _target("nect", "ident:contract", external_id=client.open_case(PSEUDONYM))


CONTRACTS = {
    c.processor: c
    for c in [
        Contract(
            "cleverreach",
            _cleverreach_seed,
            lambda: _target("cleverreach", "consent:newsletter", email="nie.gesendet@example.de"),
            lambda client: client.upsert("1001", "newsletter", [{"email": EMAIL, "insurance_number": "A123456780"}]),
            "client_secret",
        ),
        Contract(
            "timify",
            _timify_seed,
            lambda: _target("timify", "booking", external_id="000000000000000000000000"),
            lambda client: client.upsert_customer(str(SUBJECT), {"email": EMAIL, "iban": "DE02120300000000202051"}),
            "app_secret",
        ),
        Contract(
            "flexperto",
            _flexperto_seed,
            lambda: _target("flexperto", "video:B-NEVER"),
            lambda client: _module("flexperto").check_allowed({"external_id": "B-1", "insurance_number": "A123456780"}),
            "client_secret",
        ),
        Contract(
            "isic",
            _isic_seed,
            lambda: _target("isic", "student-id:O-NEVER"),
            lambda client: _module("isic").check_allowed({"cardholderId": "O-1", "iban": "DE02120300000000202051"}),
            "client_secret",
        ),
        Contract(
            "nect",
            _nect_seed,
            lambda: _target("nect", "ident:never", external_id=str(uuid.UUID(int=7))),
            lambda client: client.open_case(EMAIL),  # anything but our pseudonym
            "api_key",
        ),
    ]
}
API = catalogue.api_processors()


def test_every_api_processor_of_the_catalogue_has_a_contract_row():
    assert sorted(CONTRACTS) == sorted(API)


def _client(processor: str, **own_changes: Any) -> Any:
    """The processor's client from the settings, with fields of its settings group changed."""
    settings = get_settings()
    if own_changes:
        own = settings.processor(processor).model_copy(update=own_changes)
        settings = settings.model_copy(update={processor: own})
    return _module(processor).from_settings(settings)


def _calls(url: str, processor: str) -> int:
    return sum(requests.get(f"{url}/_sandbox/state", timeout=10).json()[processor]["calls"].values())


@pytest.mark.parametrize("processor", API)
def test_the_connector_is_built_on_the_one_http_layer_and_declared_under_its_key(against_sandbox, processor):
    module = _module(processor)
    client = _client(processor)
    assert isinstance(client.http, HttpClient)
    assert client.http.policy.max_attempts == get_settings().http_max_attempts
    assert module.PROCESSOR == processor and module.ERASER.processor == processor
    may_receive = set().union(*(p.fields for p in catalogue.processor(processor).purposes))
    allowed = module.ALLOWED_FIELDS
    fields = set().union(*allowed.values()) if isinstance(allowed, dict) else set(allowed)
    if processor == "cleverreach":  # per list: {"receiver": …, "attributes": …}, dotted in the catalogue
        fields = {
            name if part == "receiver" else f"{part}.{name}"
            for groups in allowed.values()
            for part, names in groups.items()
            for name in names
        }
    assert fields and fields <= may_receive


@pytest.mark.parametrize("processor", API)
def test_a_field_beyond_the_allow_list_is_refused_before_any_call(against_sandbox, processor):
    client = _client(processor)
    before = _calls(against_sandbox, processor)
    with pytest.raises(ValueError) as refused:
        CONTRACTS[processor].refused(client)
    assert EMAIL not in str(refused.value) and "DE0212" not in str(refused.value)
    assert _calls(against_sandbox, processor) == before


@pytest.mark.parametrize("processor", API)
def test_erase_then_verify_reads_back_absent_and_a_second_erase_is_verified(against_sandbox, processor):
    contract, eraser, client = CONTRACTS[processor], _module(processor).ERASER, _client(processor)
    target = contract.seed(client)
    assert eraser.verify(client, target) is False  # held: it reads back as present
    answer = eraser.erase(client, target)
    assert answer == (AWAITING if eraser.asynchronous else VERIFIED)
    # An asynchronous processor completes a deletion a read or two later (the sandbox: the
    # second read after the request); a bounded number of reads, no sleeping.
    reads = [eraser.verify(client, target) for _ in range(3)]
    assert reads[-1] is True and (eraser.asynchronous or all(reads))
    assert eraser.erase(client, target) == VERIFIED


@pytest.mark.parametrize("processor", API)
def test_a_record_the_processor_never_got_reads_back_absent(against_sandbox, processor):
    eraser = _module(processor).ERASER
    assert eraser.verify(_client(processor), CONTRACTS[processor].unknown()) is True


@pytest.mark.parametrize("processor", API)
def test_wrong_credentials_end_in_a_fatal_401_naming_neither_secret_nor_person(against_sandbox, processor):
    spoiled = "falsch-" + uuid.uuid4().hex
    client = _client(processor, **{CONTRACTS[processor].secret: SecretStr(spoiled)})
    target = replace(CONTRACTS[processor].unknown(), email=EMAIL)
    with pytest.raises(FatalError) as failed:
        _module(processor).ERASER.erase(client, target)
    assert failed.value.status == 401 and failed.value.processor == processor
    assert spoiled not in str(failed.value) and EMAIL not in str(failed.value)


@pytest.mark.parametrize("processor", API)
def test_a_processor_answering_503_is_asked_as_often_as_the_policy_allows_then_left_to_retry(
    against_sandbox, processor, no_sleep
):
    client = _module(processor).from_settings(get_settings().model_copy(update={"http_max_attempts": ATTEMPTS}))
    requests.post(f"{against_sandbox}/_sandbox/faults", json={"fault_rate": 1.0, "kinds": ["503"]}, timeout=5)
    try:
        with pytest.raises(RetriableError) as failed:
            _module(processor).ERASER.verify(client, CONTRACTS[processor].unknown())
    finally:
        faults = requests.get(f"{against_sandbox}/_sandbox/state", timeout=10).json()["faults"]
        requests.post(f"{against_sandbox}/_sandbox/faults", json={"fault_rate": 0.0}, timeout=5)
    assert failed.value.status == 503 and failed.value.attempts == ATTEMPTS
    assert sum(faults.values()) == ATTEMPTS  # the first call (a token, or the read) only
    assert len(no_sleep) == ATTEMPTS - 1
