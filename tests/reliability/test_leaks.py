"""Leaks (issue 7): every job runs with marker personal data, and no marker and no secret
turns up anywhere we write text to.

Four people whose every field carries a marker (names and e-mail addresses with ``zqx``,
distinctive digits in phone, insurance number, IBAN, birth date and IP addresses; the
institution, the concern, the phone password, the source URL and the document file names)
go through every flow of ``flows.registry``, in process under the Prefect harness, against
the sandbox: once without faults, once with every processor request faulted (so runs fail
and raise), once without faults again to finish. The command line takes every intake file in
(the events, the portal's Nect cases, an erasure request) and later opens an erasure
request, reports, runs a flow, verifies and exports.

Searched, for every marker and for the secrets (the sandbox's client secret and Nect key,
the Basic credentials built from them, the pseudonym key, the document key and every bearer
token the sandbox saw):

- every Python log record, at DEBUG on every logger (root, prefect, urllib3, sqlalchemy, ...),
  with its arguments and traceback, but the sandbox server's own (uvicorn: the processors'
  side); and what reached stdout/stderr;
- what Prefect stored for these runs: flow runs (names, parameters, state messages, state
  history), task runs, their API logs, all artifacts and the events since the start;
- the failed runs' exceptions (with their chains), as raised to the caller;
- the audit trail (every column of ``audit_entry`` and ``audit_head``) and its export;
- the output of every command run;
- the sandbox's request log: every header but the one carrying the processor's credentials
  (``Authorization``; Nect: ``x-api-key``), and every URL;
- the proofs of consent written to the rights outbox (encrypted), as raw bytes;
- Prefect's database file and home directory as raw bytes (markers, tokens and the document
  key only: the sandbox's fixed credentials may lawfully sit in other tests' Secret blocks;
  and not the identifiers typed into fan-out-erasure's and consent-proof's forms: they reach Prefect by design,
  and the row version they were replaced in may linger in the file until a checkpoint).

One exception, and only there: CleverReach's API addresses a receiver by e-mail address in
the path (``groups.json/{gid}/receivers/{email}``, ``…/{email}/deactivate``) when no receiver
id is known, so such a URL may hold the subject's address, and nothing else of theirs.

Not searched: the sandbox's stored state (it is the processors' copy) and our own database
tables other than the audit trail (they hold the data by design).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

import pytest
import requests
from cryptography.fernet import Fernet
from schwifty import IBAN
from sqlalchemy import text
from sqlmodel import select
from typer.testing import CliRunner

from connectors import nect
from core.clock import BERLIN, berlin_today
from core.settings import get_settings
from flows.registry import FLOWS, get_flow
from flows.retention import PURGES
from models.db import transaction
from models.erasure import ErasureRequest
from models.identity import insurance_number_valid
from models.rights import RightsRequest
from models.subjects import DataSubject
from models.types import utcnow
from psync.cli import app
from psync.sandbox_env import CREDENTIAL_ID, CREDENTIAL_SECRET, sandbox_environment

from reliability.figures import record
from support import JPEG_BYTES, PDF_BYTES, PNG_BYTES, TEST_KEY, sandbox_state

pytestmark = pytest.mark.usefixtures("prefect_harness")

DOC_KEY = Fernet.generate_key().decode()
NECT_KEY = sandbox_environment("http://unused")["PSYNC_NECT_API_KEY"]
# Every processor request fails in phase 2: errors, dropped answers, revoked tokens. Not
# "slow": it only waits.
FAULTS = {
    "fault_rate": 1.0,
    "seed": 7,
    "kinds": ["429_retry_after", "429_plain", "500", "502", "503", "drop", "token_expiry"],
}
FORM_REFERENCE = "Az. 17-2026"  # of the erasure request typed into fan-out-erasure's form
# What the officer types into that form reaches Prefect's API as the run's parameters; the
# run replaces it (checked through the API), but the superseded row version may stay in
# Prefect's database file until SQLite checkpoints (PostgreSQL: until VACUUM).
TYPED_INTO_THE_FORM = {"erna email", "erna email local part", "erna insurance number"}
# The one place a URL may carry a marker: CleverReach addresses a receiver by e-mail address.
RECEIVER_BY_EMAIL = re.compile(r"/cleverreach/v3/groups\.json/[^/]+/receivers/(?P<target>[^/?]+)(?:/deactivate)?")
AUTH_HEADERS = {
    "cleverreach": {"authorization"},
    "timify": {"authorization"},
    "flexperto": {"authorization"},
    "isic": {"authorization"},
    "nect": {"x-api-key"},
}


def _insurance(stem: str) -> str:
    return next(stem + d for d in "0123456789" if insurance_number_valid(stem + d))


@dataclass(frozen=True)
class Person:
    """A data subject whose every field is a marker (distinctive letters or digits)."""

    tag: str
    first: str
    last: str
    phone: str  # as typed; +49 170 …, 8-digit subscriber numbers
    insurance_stem: str  # a letter no hex string has, 8 digits; the check digit is computed
    account: str  # 10 digits of a German IBAN
    birth: date
    ip: str
    confirm_ip: str

    @property
    def email(self) -> str:
        return f"zqx.{self.tag}.post@example.de"

    @property
    def insurance(self) -> str:
        return _insurance(self.insurance_stem)

    @property
    def iban(self) -> IBAN:
        return IBAN.generate("DE", bank_code="37040044", account_code=self.account)

    @property
    def institution(self) -> str:
        return f"Zqxakademie {self.tag.title()}"

    @property
    def concern(self) -> str:
        return f"Zqxanliegen {self.tag} Zahnersatz"

    @property
    def password(self) -> str:
        return f"Zqxkennwort{self.tag}7"

    @property
    def source(self) -> str:
        return f"https://www.example.de/zqxquelle-{self.tag}"

    @property
    def documents(self) -> dict[str, str]:
        return {
            "student_proof": f"zqxdatei-{self.tag}-nachweis.pdf",
            "id_copy": f"zqxdatei-{self.tag}-ausweis.png",
            "photo": f"zqxdatei-{self.tag}-foto.jpg",
        }

    def markers(self) -> dict[str, str]:
        """What of this person must not show up: name -> the string searched for."""
        digits = re.sub(r"\D", "", self.phone)
        return {
            "email": self.email,
            "email local part": self.email.split("@")[0],
            "first name": self.first,
            "last name": self.last,
            "phone as typed": self.phone,
            "phone E.164": "+" + digits,
            "phone digits": digits[2:],
            "insurance number": self.insurance,
            "IBAN": self.iban.compact,
            "IBAN printed": self.iban.formatted,
            "IBAN account": self.account,
            "birth date": self.birth.isoformat(),
            "birth date (German)": self.birth.strftime("%d.%m.%Y"),
            "sign-up IP": self.ip,
            "confirmation IP": self.confirm_ip,
            "institution": self.institution,
            "concern": self.concern,
            "phone password": self.password,
            "source URL": self.source,
            **{f"file name {role}": name for role, name in self.documents.items()},
        }


ERNA = Person(
    "erna",
    "Zqxernavor",
    "Zqxernanach",
    "+49 170 58314729",
    "Q73194628",
    "7319462805",
    date(2003, 11, 7),
    "198.51.100.173",
    "198.51.100.174",
)
FRITZ = Person(
    "fritz",
    "Zqxfritzvor",
    "Zqxfritznach",
    "+49 171 93058264",
    "Q84205739",
    "8420573916",
    date(2002, 6, 19),
    "203.0.113.219",
    "203.0.113.218",
)
GERDA = Person(
    "gerda",
    "Zqxgerdavor",
    "Zqxgerdanach",
    "+49 152 37194602",
    "Q95316840",
    "9531684027",
    date(1961, 8, 23),
    "198.51.100.231",
    "198.51.100.232",
)
HEIKE = Person(
    "heike",
    "Zqxheikevor",
    "Zqxheikenach",
    "+49 160 64827391",
    "Q16427951",
    "1642795138",
    date(2004, 1, 13),
    "203.0.113.187",
    "203.0.113.186",
)
# Ida comes last, for issue 18's rights (flows/amend.py): corrected, restricted, objecting.
IDA = Person(
    "ida",
    "Zqxidavor",
    "Zqxidanach",
    "+49 157 47205938",
    "Q27538160",
    "2753816049",
    date(2001, 4, 9),
    "198.51.100.241",
    "198.51.100.242",
)
PEOPLE = (ERNA, FRITZ, GERDA, HEIKE, IDA)
# What Ida's data are corrected to (Art. 16): new personal data, searched as well.
CORRECTED = {"email": "zqx.ida.korrigiert@example.de", "last name": "Zqxidaneu", "phone digits": "15259381746"}


# the events ------------------------------------------------------------------------------
def _at(hours_ago: float) -> str:
    return (utcnow() - timedelta(hours=hours_ago)).isoformat()


def _start(days: int, hour: int = 10) -> str:
    day = berlin_today(utcnow()) + timedelta(days=days)
    return datetime(day.year, day.month, day.day, hour, 5, tzinfo=BERLIN).isoformat()


def signup(p: Person, list_name: str, confirm: bool = True) -> list[dict]:
    extra = {"insurance_number": p.insurance} if list_name == "service_offers" else {}
    events = [
        {
            "type": "consent.signup",
            "list": list_name,
            "email": p.email,
            "salutation": "Frau",
            "first_name": p.first,
            "last_name": p.last,
            "ip": p.ip,
            "at": _at(3),
            "source": p.source,
            "policy_version": "2026-01",
            **extra,
        }
    ]
    if confirm:
        events.append(
            {"type": "consent.confirm", "list": list_name, "email": p.email, "ip": p.confirm_ip, "at": _at(2)}
        )
    return events


def booking(p: Person, ref: str, video: bool, days: int) -> dict:
    event = {
        "type": "booking.request",
        "booking_id": ref,
        "channel": "video" if video else "branch",
        "start": _start(days),
        "duration_minutes": 30,
        "salutation": "Frau",
        "first_name": p.first,
        "last_name": p.last,
        "phone": p.phone,
        "email": p.email,
        "concern": p.concern,
        "at": _at(3),
    }
    if video:
        event["birth_date"] = p.birth.isoformat()
    else:
        event.update(service_point="sp-berlin", insurance_number=p.insurance)
    return event


def order(p: Person, ref: str) -> dict:
    return {
        "type": "isic.order",
        "order_id": ref,
        "first_name": p.first,
        "last_name": p.last,
        "birth_date": p.birth.isoformat(),
        "email": p.email,
        "postal_code": "10115",
        "iban": p.iban.formatted,
        "institution": p.institution,
        "student_status": "student",
        "phone_password": p.password,
        "documents": p.documents,
        "at": _at(3),
    }


def first_events() -> list[dict]:
    return [
        *signup(ERNA, "newsletter"),
        *signup(ERNA, "service_offers"),
        booking(ERNA, "LK-ERNA-1", video=False, days=3),
        booking(ERNA, "LK-ERNA-2", video=True, days=4),
        {"type": "booking.reschedule", "booking_id": "LK-ERNA-2", "start": _start(5), "at": _at(1)},
        order(ERNA, "LK-ISIC-ERNA"),
        *signup(FRITZ, "newsletter"),
        booking(FRITZ, "LK-FRITZ-1", video=True, days=6),
        order(FRITZ, "LK-ISIC-FRITZ"),
        *signup(GERDA, "newsletter", confirm=False),
        *signup(GERDA, "service_offers"),
        {"type": "consent.withdraw", "list": "service_offers", "email": GERDA.email, "channel": "portal", "at": _at(1)},
        *signup(HEIKE, "newsletter"),
        booking(HEIKE, "LK-HEIKE-1", video=True, days=2),
        order(HEIKE, "LK-ISIC-HEIKE"),
    ]


def rejected_events() -> list[dict]:
    """Lines the intake refuses, full of markers: the reasons must not repeat them."""
    return [
        {**booking(ERNA, "LK-ERNA-BAD", video=False, days=3), "duration_minutes": 7},
        {**order(GERDA, "LK-ISIC-GERDA"), "online_banking_pin": GERDA.password},
        {
            "type": "consent.confirm",
            "list": "newsletter",
            "email": "zqx.niemand.post@example.de",
            "ip": GERDA.ip,
            "at": _at(1),
        },
    ]


# capturing --------------------------------------------------------------------------------
class _Collect(logging.Handler):
    """Every record as text: logger, level, the message, its raw arguments, the traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.loggers: Counter[str] = Counter()
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        parts = [record.name, record.levelname, record.getMessage(), repr(record.args)]
        if record.exc_info:
            parts.append(self._formatter.formatException(record.exc_info))
        if record.stack_info:
            parts.append(record.stack_info)
        self.texts.append(" | ".join(parts))
        self.loggers[record.name.split(".")[0]] += 1


@contextmanager
def every_logger_at_debug() -> Iterator[_Collect]:
    """DEBUG on the root and on every logger that sets a level of its own; the collector on
    the root and on every logger that does not propagate. Prefect's API handler ships all of
    it; the stream handlers already there (console, pytest's) keep printing what they printed
    before (at WARNING at most): formatting every DEBUG record for the console would cost more
    than the jobs. Everything is restored afterwards."""
    handler = _Collect()
    root = logging.getLogger()
    loggers = [root, *(x for x in logging.root.manager.loggerDict.values() if isinstance(x, logging.Logger))]
    levels = {logger: logger.level for logger in loggers}
    others = {h: h.level for logger in loggers for h in logger.handlers if isinstance(h, logging.StreamHandler)}
    # Not uvicorn's: in these tests it is the sandbox's server, the processors' side of the
    # wire (its access log is the processor's); what reaches it is checked in its request log.
    attached = [x for x in loggers if (x is root or not x.propagate) and not x.name.startswith("uvicorn")]
    for logger in loggers:
        if logger is root or logger.level != logging.NOTSET:
            logger.setLevel(logging.DEBUG)
    for other in others:
        other.setLevel(max(other.level, logging.WARNING))
    for logger in attached:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in attached:
            logger.removeHandler(handler)
        for logger, level in levels.items():
            logger.setLevel(level)
        for other, level in others.items():
            other.setLevel(level)


@dataclass
class Scene:
    """The jobs' world: the sandbox, the intake folder; what the runs and commands left."""

    url: str
    folder: Path
    runner: CliRunner = field(default_factory=CliRunner)
    outputs: list[str] = field(default_factory=list)  # what the commands printed
    failures: list[str] = field(default_factory=list)  # failed runs' exceptions, with their chains
    failed_flows: Counter[str] = field(default_factory=Counter)
    ran: set[str] = field(default_factory=set)
    runs: int = 0
    requests: list[dict] = field(default_factory=list)  # the sandbox's request log
    seen_requests: int = 0

    def run(self, name: str, expect_failure: bool | None = None, **params) -> dict | None:
        """Run a flow of the registry; a failure is recorded (and checked against the
        expectation when one is given), not raised."""
        self.ran.add(name)
        self.runs += 1
        try:
            result = get_flow(name)(**params)
        except Exception as exc:  # noqa: BLE001 - the failure's text is what is examined
            self.failures.append("".join(traceback.format_exception(exc)))
            self.failed_flows[name] += 1
            assert expect_failure is not False, (name, self.failures[-1])
            return None
        assert expect_failure is not True, f"{name} was expected to fail: {result}"
        return result

    def cli(self, *args: str, code: int | None = 0) -> str:
        result = self.runner.invoke(app, list(args))
        output = result.output  # stdout and stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            output += "".join(traceback.format_exception(result.exception))
        self.outputs.append(output)  # not the arguments: they are ours (an e-mail address typed in)
        if code is not None:
            assert result.exit_code == code, (args, output)
        return result.stdout

    def intake(self, name: str, events: list[dict], code: int = 0) -> str:
        path = self.folder / name
        path.write_text("\n".join(json.dumps(e) for e in events) + "\n", encoding="utf-8")
        return self.cli("intake", str(path), code=code)

    def post(self, route: str, body: dict | None = None) -> dict:
        response = requests.post(f"{self.url}/_sandbox/{route}", json=body or {}, timeout=10)
        response.raise_for_status()
        return response.json()

    def collect_requests(self) -> None:
        """The sandbox's request log since the last call; nothing may have rolled out of it."""
        log = requests.get(f"{self.url}/_sandbox/requests", timeout=10).json()
        new = log["total"] - self.seen_requests
        assert new <= len(log["requests"]), "the sandbox's request log overflowed; read it more often"
        self.requests += log["requests"][-new:] if new else []
        self.seen_requests = log["total"]


@pytest.fixture
def scene(against_sandbox, monkeypatch, tmp_path, no_sleep):
    monkeypatch.setenv("PSYNC_DOCUMENT_KEY", DOC_KEY)
    monkeypatch.setenv("PSYNC_RIGHTS_OUTBOX", str(tmp_path / "rights-outbox"))
    get_settings.cache_clear()
    for p in PEOPLE:
        for role, name in p.documents.items():
            data = {"student_proof": PDF_BYTES, "id_copy": PNG_BYTES, "photo": JPEG_BYTES + p.tag.encode()}[role]
            (tmp_path / name).write_bytes(data)
    return Scene(against_sandbox, tmp_path)


def nect_cases(*people: Person) -> list[dict]:
    """What the portal does: an identification at Nect for each (only the pseudonym goes
    there), handed over as ``ident.case`` lines, with the insurance number where known."""
    client = nect.from_settings(get_settings())
    with transaction() as session:
        pseudonyms = {
            p: session.exec(select(DataSubject.pseudonym).where(DataSubject.email == p.email)).one() for p in people
        }
    return [
        {
            "type": "ident.case",
            "email": p.email,
            "case_id": client.open_case(pseudonyms[p]),
            "at": _at(0.5),
            **({"insurance_number": p.insurance} if p is ERNA else {}),
        }
        for p in people
    ]


def rights_requests() -> list[str]:
    with transaction() as session:
        return [str(rid) for rid in session.exec(select(RightsRequest.id))]


def erasure_requests() -> list[str]:
    with transaction() as session:
        return [str(rid) for rid in session.exec(select(ErasureRequest.id))]


RUN_TAG = "test-leaks"


# the scenario -------------------------------------------------------------------------------
def play(scene: Scene) -> dict:
    """Every job, clean, then with every processor request faulted, then clean again.
    Returns the sandbox's state after the first phase (the processors held the data then)."""
    today = berlin_today(utcnow())
    first = first_events()
    scene.intake("rejected.jsonl", first[:1] + rejected_events(), code=1)
    scene.intake("events.jsonl", first)

    # 1. Clean: everyone reaches every processor.
    scene.run("sync-newsletter-consents", False)
    scene.post("cleverreach/unsubscribe", {"email": HEIKE.email})  # "abmelden" in a newsletter
    scene.run("pull-newsletter-unsubscribes", False)
    scene.run("expire-unconfirmed-optins", False, as_of=utcnow() + timedelta(days=40))
    scene.run("push-bookings", False)
    for customer_id in sandbox_state(scene.url)["flexperto"]["customers"]:
        scene.post("flexperto/chats", {"customer_id": customer_id})
    scene.run("forward-student-id-orders", False)
    scene.post("isic/issue")
    scene.run("sync-student-id-order-status", False)
    scene.run("purge-student-id-documents", False, as_of=today + timedelta(days=31))
    scene.intake("cases.jsonl", nect_cases(ERNA, FRITZ, HEIKE))
    # Proof of consent: from the form (the address typed in) and by command (to the outbox).
    scene.run("consent-proof", False, email=ERNA.email)
    scene.cli("consent", "proof", "--email", GERDA.email, "--out")
    held = sandbox_state(scene.url)
    scene.collect_requests()

    # 2. Every processor request faulted: each run with work to do fails.
    scene.intake(
        "changes.jsonl",
        [
            {"type": "booking.cancel", "booking_id": "LK-FRITZ-1", "at": _at(0.5)},
            {"type": "isic.cancel", "order_id": "LK-ISIC-FRITZ", "at": _at(0.5)},
            {"type": "booking.reschedule", "booking_id": "LK-HEIKE-1", "start": _start(7), "at": _at(0.5)},
            *signup(GERDA, "newsletter"),
        ],
    )
    scene.post("faults", FAULTS)
    scene.run("sync-newsletter-consents", True)
    scene.run("pull-newsletter-unsubscribes", True)
    scene.run("push-bookings", True)
    scene.run("purge-video-chat-data", True, as_of=today + timedelta(days=120))
    scene.run("forward-student-id-orders", True)
    # The identifiers typed into the form; the run fails, as no processor can be reached.
    scene.run(
        "fan-out-erasure",
        True,
        email=ERNA.email.upper(),
        insurance_number=ERNA.insurance,
        channel="letter",
        reference=FORM_REFERENCE,
    )
    scene.run("follow-up-erasures")
    # An address the proof's form refuses: the run fails without repeating it.
    scene.run("consent-proof", True, email=ERNA.email.replace("@", "@@"))
    # A data-subject request typed into its form (the same identifiers as the erasure's): the
    # access package cannot be built while the processors fail; the follow-up finishes it.
    scene.run(
        "handle-rights-request",
        True,
        right="access",
        email=ERNA.email.upper(),
        insurance_number=ERNA.insurance,
        channel="phone",
        reference=FORM_REFERENCE,
    )
    scene.post("faults", {"fault_rate": 0.0})
    scene.collect_requests()

    # 3. Clean again: everything catches up; an erasure by intake, one by the command line.
    scene.intake(
        "erasure.jsonl",
        [
            {
                "type": "erasure.request",
                "email": HEIKE.email,
                "channel": "portal",
                "reference": "Portal-Loeschantrag",
                "at": _at(0.2),
            },
            {"type": "rights.request", "right": "access", "email": HEIKE.email, "at": _at(0.2)},
            {"type": "rights.request", "right": "portability", "email": FRITZ.email, "at": _at(0.2)},
        ],
    )
    # Access packages (read back at every processor) and a portability export, before the
    # erasures complete: the packages hold the data, nothing around them may.
    scene.run("follow-up-rights-requests", False)
    scene.cli("request", "portability", "--email", GERDA.email, "--channel", "letter", "--reference", "AZ 19/26")
    scene.cli("request", "list", "--status", "all")
    for request_id in rights_requests():
        scene.cli("request", "show", request_id)
    for name in (
        "sync-newsletter-consents",
        "pull-newsletter-unsubscribes",
        "push-bookings",
        "forward-student-id-orders",
        "sync-student-id-order-status",
    ):
        scene.run(name, False)
    scene.run("purge-video-chat-data", False, as_of=today + timedelta(days=120))
    scene.run("follow-up-erasures", False)
    scene.cli("erasure", "request", "--email", FRITZ.email, "--channel", "letter", "--reference", "AZ 18/26")
    # Two months on, Fritz's request (the issuer and Nect delete asynchronously) is overdue.
    scene.run("watch-erasure-deadlines", True, as_of=today + timedelta(days=60))
    # The deletion rules months on (TIMIFY customers past their last appointment), and the
    # monitor's check: whatever they find, nothing of a person in what they write.
    scene.run("enforce-retention", None, as_of=today + timedelta(days=120))
    scene.cli("retention", "check", "--as-of", (today + timedelta(days=120)).isoformat(), code=None)
    requests_opened = erasure_requests()
    assert len(requests_opened) == 3  # Erna's by the form, Heike's by intake, Fritz's by command
    for request_id in requests_opened:
        scene.cli("erasure", "report", request_id, "--format", "md")
        scene.cli("erasure", "report", request_id, "--format", "json")
    amend_ida(scene)
    scene.cli("run", "sync-newsletter-consents")
    scene.cli("audit", "verify")
    scene.cli("audit", "export", "--format", "jsonl")
    scene.cli("audit", "export", "--format", "csv")
    scene.collect_requests()
    return held


def amend_ida(scene: Scene) -> None:
    """Issue 18 for Ida (at CleverReach, TIMIFY, Flexperto, the issuer and Nect; USU by the
    register), through the rights plumbing (``handle-rights-request`` with the request id):
    her data corrected (twice: the second changes nothing), her processing restricted (a new
    booking held back by push-bookings) and lifted by the command line, then her objection
    withdrawing every consent. The letters (her data, for the officer) go to the encrypted
    outbox; the Art. 19 report the command prints is searched like every command's output."""
    from flows.rights import open_request

    scene.intake(
        "ida.jsonl",
        [*signup(IDA, "newsletter"), booking(IDA, "LK-IDA-1", video=True, days=8), order(IDA, "LK-ISIC-IDA")],
    )
    for name in ("sync-newsletter-consents", "push-bookings", "forward-student-id-orders"):
        scene.run(name, False)
    scene.intake("ida-case.jsonl", nect_cases(IDA))
    fix = {
        "email": CORRECTED["email"],
        "last_name": CORRECTED["last name"],
        "phone": "+49 " + CORRECTED["phone digits"],
    }

    def answer(right: str, email: str, **changes) -> dict:
        with transaction() as session:
            rid = open_request(session, right=right, email=email, channel="letter", reference="Brief", **changes).id
        counts = scene.run("handle-rights-request", False, request_id=str(rid))
        scene.cli("request", "show", str(rid))
        assert counts is not None
        return counts

    first = answer("rectification", IDA.email, changes=fix)
    again = answer("rectification", CORRECTED["email"], changes=fix)
    restricted = answer("restriction", CORRECTED["email"])
    scene.intake("ida-later.jsonl", [booking(IDA, "LK-IDA-2", video=False, days=9) | {"email": CORRECTED["email"]}])
    held = scene.run("push-bookings", False)
    scene.cli(
        "request",
        "lift",
        "--email",
        CORRECTED["email"],
        "--reason",
        "Richtigkeit geprüft",
        "--informed-on",
        berlin_today(utcnow()).isoformat(),
    )
    pushed = scene.run("push-bookings", False)
    objected = answer("objection", CORRECTED["email"])
    scene.run("follow-up-rights-requests", None)
    assert first.get("rectified") == 4 and "rectified" not in again, (first, again)
    assert restricted.get("deactivated") == 1 and restricted.get("amend_letters"), restricted
    assert held and held.get("held_restricted") == 1 and pushed and pushed.get("pushed") == 1, (held, pushed)
    assert objected.get("consents_withdrawn") == 1 and objected.get("removed") == 1, objected


# what Prefect stored --------------------------------------------------------------------------
def _pages(read: Callable[[int, int], list]) -> list:
    items, offset = [], 0
    while True:
        page = read(200, offset)
        items += page
        if len(page) < 200:
            return items
        offset += 200


def prefect_texts(since: datetime) -> dict[str, list[str]]:
    """Everything the Prefect API holds about the runs since `since`, as JSON texts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterStartTime,
        LogFilter,
        LogFilterFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )
    from prefect.events.filters import EventFilter, EventOccurredFilter
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        started = FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since))
        runs = _pages(lambda limit, offset: client.read_flow_runs(flow_run_filter=started, limit=limit, offset=offset))
        ids = [run.id for run in runs]
        states = [state for run in runs for state in client.read_flow_run_states(run.id)]
        tasks = _pages(
            lambda limit, offset: client.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=ids)), limit=limit, offset=offset
            )
        )
        logs = _pages(
            lambda limit, offset: client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=limit, offset=offset
            )
        )
        artifacts = _pages(lambda limit, offset: client.read_artifacts(limit=limit, offset=offset))
        page = client.read_events(EventFilter(occurred=EventOccurredFilter(since=since)), limit=50)
        events = list(page.events)
        while page.next_page:
            page = client.read_events_page(page.next_page)
            events += page.events
    return {
        "prefect flow runs": [run.model_dump_json() for run in runs],
        "prefect flow run states": [state.model_dump_json() for state in states],
        "prefect task runs": [task.model_dump_json() for task in tasks],
        "prefect logs": [log.model_dump_json() for log in logs],
        "prefect artifacts": [artifact.model_dump_json() for artifact in artifacts],
        "prefect events": [event.model_dump_json() for event in events],
        "_runs": runs,
        "_logs": logs,
        "_artifacts": artifacts,
    }


def prefect_files() -> list[tuple[str, bytes]]:
    """Prefect's database file(s) and everything under its home, as raw bytes."""
    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url.get_secret_value()
    path = Path(url.split("///", 1)[-1])  # sqlite+aiosqlite:///…/prefect-test.db
    files = [f for f in path.parent.glob(path.name + "*") if f.is_file()]
    files += [f for f in Path(os.environ["PREFECT_HOME"]).rglob("*") if f.is_file()]
    assert any(f.name.endswith(".db") for f in files), "Prefect's database file not found"
    return [(str(f), f.read_bytes()) for f in files]


def audit_texts() -> list[str]:
    with transaction() as session:
        rows = session.execute(text("SELECT * FROM audit_entry ORDER BY id")).all()
        head = session.execute(text("SELECT * FROM audit_head")).all()
    return [" ".join(map(str, row)) for row in [*rows, *head]]


# the sandbox's request log ------------------------------------------------------------------------
def request_texts(entries: list[dict]) -> tuple[dict[str, list[str]], list[str], int, list[str]]:
    """(texts to search, the bearer tokens seen, URLs with an e-mail address where allowed,
    the credentials headers).

    The credentials header is left out of the search (it carries secrets by design), and
    searched for markers only; a CleverReach receiver URL's e-mail segment is cut out once it
    is seen to be exactly one person's address.
    """
    emails = {p.email for p in PEOPLE} | {CORRECTED["email"]}
    headers, credentials, urls, tokens, by_email = [], [], [], [], 0
    for entry in entries:
        processor = entry["path"].split("/")[1]
        auth = AUTH_HEADERS[processor]
        headers += [f"{processor} {k}: {v}" for k, v in entry["headers"] if k.lower() not in auth]
        for name, value in entry["headers"]:
            if name.lower() in auth:
                credentials.append(f"{processor} {name}: {value}")
                scheme, _, rest = value.partition(" ")
                if processor != "nect" and scheme.lower() != "basic":
                    tokens.append(rest or scheme)
        path = unquote(entry["path"])
        receiver = RECEIVER_BY_EMAIL.fullmatch(path)
        if receiver and receiver["target"] in emails:
            by_email += 1
            path = path.replace(receiver["target"], "{email}")
        urls.append(f"{entry['method']} {path}?{unquote(entry['query'])}")
    texts = {"sandbox request headers": headers, "sandbox request URLs": urls}
    return texts, sorted(set(tokens)), by_email, credentials


# searching ---------------------------------------------------------------------------------------
def search(texts: dict[str, list[str]], needles: dict[str, str]) -> list[tuple[str, str, str]]:
    """(channel, needle name, the text around it) for every needle found, case-insensitively."""
    hits = []
    for channel, items in texts.items():
        joined = "\n\x00\n".join(items).lower()
        for name, needle in needles.items():
            at = joined.find(needle.lower())
            if at >= 0:
                hits.append((channel, name, joined[max(0, at - 80) : at + len(needle) + 80]))
    return hits


def search_bytes(files: list[tuple[str, bytes]], needles: dict[str, str]) -> list[tuple[str, str, str]]:
    hits = []
    for path, data in files:
        lowered = data.lower()
        for name, needle in needles.items():
            if needle.lower().encode() in lowered:
                hits.append((f"file {path}", name, ""))
    return hits


def test_no_marker_and_no_secret_anywhere_we_write_text(scene, capfd):
    # No margin: the flows run in this process on this clock, and a margin counted the
    # previous test's last runs (the run count below then failed, in some orders).
    from prefect import tags

    since = utcnow()
    # Our runs carry a tag: another test's run may start in this window (one did, once, in CI).
    with every_logger_at_debug() as logs, tags(RUN_TAG):
        held = play(scene)
    prefect = prefect_texts(since)
    runs, api_logs, artifacts = prefect.pop("_runs"), prefect.pop("_logs"), prefect.pop("_artifacts")
    captured = capfd.readouterr()
    requested, tokens, by_email, credentials = request_texts(scene.requests)

    markers = {f"{p.tag} {name}": value for p in PEOPLE for name, value in p.markers().items()}
    markers |= {f"gerda corrected {name}": value for name, value in CORRECTED.items()}
    basic = base64.b64encode(f"{CREDENTIAL_ID}:{CREDENTIAL_SECRET}".encode()).decode()
    secrets = {
        "client secret": CREDENTIAL_SECRET,
        "Nect API key": NECT_KEY,
        "Basic credentials": basic,
        "pseudonym key": TEST_KEY,
        "document key": DOC_KEY,
        **{f"bearer token {i}": token for i, token in enumerate(tokens)},
    }
    texts = {
        "python logging": logs.texts,
        "stdout/stderr": [captured.out, captured.err],
        **prefect,
        "exceptions of failed runs": scene.failures,
        "audit trail": audit_texts(),
        "command output": scene.outputs,
        **requested,
    }
    hits = search(texts, {**markers, **secrets})
    hits += search({"sandbox credentials headers": credentials}, markers)
    files = prefect_files()
    # What the outbox holds for the people (proofs of consent, access packages, Art. 19
    # reports and letters): encrypted, so not one marker in their bytes.
    outbox = sorted(p for p in get_settings().outbox_dir().rglob("*") if p.is_file())
    proofs = [p for p in outbox if p.parent.name.startswith("consent-proof-") and p.suffix == ".enc"]
    assert len(proofs) == 4, outbox  # two proofs, Markdown and HTML each
    files += [(str(p), p.read_bytes()) for p in outbox]
    raw = {k: v for k, v in markers.items() if k not in TYPED_INTO_THE_FORM}
    raw |= {"document key": DOC_KEY, **{f"bearer token {i}": t for i, t in enumerate(tokens)}}
    hits += search_bytes(files, raw)

    searched = sum(map(len, texts.values())) + len(credentials) + len(files)
    size = sum(len(t.encode()) for items in texts.values() for t in items) + sum(len(d) for _, d in files)
    record("leak texts searched", searched)
    record("leak bytes searched", size)
    record("leak markers and secrets", len(markers) + len(secrets))
    record("leak runs failed on purpose", sum(scene.failed_flows.values()))
    record("leak URLs with an e-mail (CleverReach receivers/{email})", by_email)
    record("leak hits", len(hits))
    assert not hits, "\n".join(f"{channel}: {name}: …{context!r}…" for channel, name, context in hits)

    # Not vacuous: the same search finds the markers where the data lawfully is (the
    # processors' copy), every channel was filled, every flow ran, and runs failed.
    lawful = {name for _, name, _ in search({"sandbox": [json.dumps(held)]}, markers)}
    assert {
        "erna email",
        "erna last name",
        "erna phone E.164",
        "erna insurance number",
        "erna concern",
        "erna institution",
        "erna birth date",
        "erna sign-up IP",
    } <= lawful, lawful
    assert {"psync", "prefect", "urllib3", "sqlalchemy"} <= set(logs.loggers), logs.loggers
    assert scene.ran == set(FLOWS)
    ours = [run for run in runs if RUN_TAG in run.tags]
    others = [
        f"{run.name} flow={run.flow_id} started={run.start_time} tags={run.tags}" for run in runs if run not in ours
    ]
    top = [run for run in ours if run.parent_task_run_id is None]  # enforce-retention's purges are subflows
    assert len(top) == scene.runs + 3 and artifacts, others  # three started by commands
    assert len(ours) - len(top) == len(PURGES)
    assert {log.level for log in api_logs} >= {logging.DEBUG, logging.INFO, logging.ERROR}
    assert {a.key for a in artifacts} >= {"sync-newsletter-consents", "push-bookings", "follow-up-erasures"}
    assert set(scene.failed_flows) >= {
        "sync-newsletter-consents",
        "push-bookings",
        "forward-student-id-orders",
        "purge-video-chat-data",
        "fan-out-erasure",
        "watch-erasure-deadlines",
    }
    assert tokens and {e["path"].split("/")[1] for e in scene.requests} == set(AUTH_HEADERS)
    assert "audit trail intact" in "".join(scene.outputs)
    # The identifiers typed into fan-out-erasure's form are gone from its stored parameters.
    # The reference is blanked too (one refused for holding a name must not stay either).
    [form] = [run for run in ours if run.parameters.get("channel") == "letter" and run.parameters.get("request_id")]
    assert {form.parameters[k] for k in ("email", "insurance_number", "subject_id", "reference")} == {""}, (
        form.parameters
    )
    assert form.parameters["request_id"] in erasure_requests()
    # And from handle-rights-request's: everything typed in, the new values too.
    [rights_form] = [run for run in ours if run.parameters.get("channel") == "phone"]
    typed = ("email", "insurance_number", "subject_id", "reference", "new_email", "new_last_name", "new_phone")
    assert {rights_form.parameters[k] for k in typed} == {""}, rights_form.parameters
    assert rights_form.parameters["request_id"] in rights_requests()
    assert len(rights_requests()) == 8  # 4 access and portability, 4 of Ida's (amend_ida)
    with transaction() as session:  # not vacuous: every package and export was written
        assert {r.status for r in session.exec(select(RightsRequest))} == {"completed"}
