"""The website's HTTP door (``psync serve``), over real HTTP: uvicorn on a free port in a thread.

Signed, unsigned, wrong signature, stale timestamp, replayed body, oversized body, a batch
with good and bad events, an idempotent re-post, concurrent posts of the same event, the rate
limit, documents inline (base64) and as file parts of a multipart/form-data body, and the
OpenAPI schema.
"""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta

import pytest
import requests
from cryptography.fernet import Fernet
from sqlalchemy import func, select

from models.consent import ConsentEvent, ConsentRecord
from models.db import transaction
from models.isic import IsicDocument, IsicOrder
from psync.serve import DoorConfig, TokenBuckets, sign

from doorway import Clock, encode_form, post_form, serve_door
from support import JPEG_BYTES, PDF_BYTES, PNG_BYTES, TEST_KEY, isic_order

SECRET = b"door-test-secret"
NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
EMAIL = "erika.mustermann@example.de"


def signup(email: str = EMAIL, **kw) -> dict:
    event = {
        "type": "consent.signup",
        "list": "newsletter",
        "email": email,
        "salutation": "Frau",
        "first_name": "Erika",
        "last_name": "Mustermann",
        "ip": "192.0.2.10",
        "at": (NOW - timedelta(hours=2)).isoformat(),
        "source": "https://example.de/nl",
        "policy_version": "2026-01",
    }
    event.update(kw)
    return event


def order(order_id: str = "O-1", **documents) -> dict:
    docs = {"student_proof": PDF_BYTES, "id_copy": PNG_BYTES, "photo": JPEG_BYTES}
    inline = {k: {"base64": base64.b64encode(v).decode()} for k, v in docs.items()} | documents
    return isic_order(order_id, (NOW - timedelta(minutes=1)).isoformat(), documents=inline)


@pytest.fixture
def door(settings):
    """Start a door (uvicorn, real HTTP) with config overrides; returns (url, clock)."""
    with ExitStack() as doors:

        def start(**overrides):
            clock = Clock(NOW)
            config = DoorConfig(
                **{
                    "secret": SECRET,
                    "key": TEST_KEY.encode(),
                    "document_key": Fernet.generate_key(),
                    "rate_per_second": 1000.0,
                    "rate_burst": 1000,
                    "max_document_bytes": 4096,
                    "clock": clock,
                    **overrides,
                }
            )
            return doors.enter_context(serve_door(config)), clock

        yield start


@pytest.fixture
def spool_folders(monkeypatch):
    """Every folder the door spools documents into during the test. Only these are checked
    afterwards: other tests' doors (in other workers) spool into /dev/shm at the same time."""
    import tempfile
    from pathlib import Path

    made: list[Path] = []
    real = tempfile.mkdtemp

    def recording(*args, **kwargs):
        made.append(Path(real(*args, **kwargs)))
        return str(made[-1])

    monkeypatch.setattr("psync.serve.tempfile.mkdtemp", recording)
    return made


def post(url, body, clock=None, secret=SECRET, timestamp=None, signature=None, headers=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    ts = timestamp if timestamp is not None else str(int((clock() if clock else NOW).timestamp()))
    sent = {
        "Content-Type": "application/json",
        "X-Psync-Timestamp": ts,
        "X-Psync-Signature": signature or sign(secret, ts, raw),
        **(headers or {}),
    }
    return requests.post(f"{url}/v1/events", data=raw, headers=sent, timeout=30)


def consent_events() -> int:
    with transaction() as session:
        return session.execute(select(func.count()).select_from(ConsentEvent)).scalar_one()


def test_a_signed_event_is_stored_and_the_answer_does_not_echo_it(door):
    url, clock = door()
    answer = post(url, signup(), clock)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "results": [{"index": 0, "result": "stored"}],
        "counts": {"stored": 1, "unchanged": 0, "duplicate": 0, "rejected": 0, "pending": 0},
    }
    assert consent_events() == 1


def test_unsigned_wrong_signature_and_wrong_secret_are_refused_and_store_nothing(door):
    url, clock = door()
    body = json.dumps(signup()).encode()
    unsigned = requests.post(f"{url}/v1/events", data=body, timeout=10)
    assert unsigned.status_code == 401 and "missing" in unsigned.json()["error"]
    ts = str(int(NOW.timestamp()))
    tampered = post(url, body.replace(b"Erika", b"Erica"), timestamp=ts, signature=sign(SECRET, ts, body))
    assert tampered.status_code == 401 and tampered.json() == {"error": "invalid signature"}
    assert post(url, body, secret=b"someone-else").status_code == 401
    assert post(url, body, signature="sha256=zz").status_code == 401
    assert post(url, body, signature="md5=" + "0" * 32).status_code == 401
    assert post(url, body, timestamp="yesterday").status_code == 401
    assert EMAIL not in unsigned.text + tampered.text
    assert consent_events() == 0


@pytest.mark.parametrize("skew", [timedelta(minutes=5, seconds=1), -timedelta(minutes=5, seconds=1)])
def test_a_timestamp_more_than_five_minutes_off_is_refused(door, skew):
    url, clock = door()
    stale = str(int((NOW + skew).timestamp()))
    answer = post(url, signup(), timestamp=stale)
    assert answer.status_code == 401 and "300 s" in answer.json()["error"]
    # Just inside the window is fine.
    inside = str(int((NOW + skew / abs(skew.total_seconds()) * 300).timestamp()))
    assert post(url, signup(), timestamp=inside).status_code == 200
    assert consent_events() == 1


def test_a_replayed_request_is_refused_and_a_re_signed_one_stores_nothing_twice(door):
    url, clock = door()
    body = json.dumps(signup()).encode()
    ts = str(int(NOW.timestamp()))
    first = post(url, body, timestamp=ts)
    assert first.json()["counts"]["stored"] == 1
    replay = post(url, body, timestamp=ts)
    assert replay.status_code == 409 and "sign again" in replay.json()["error"]
    # Signed afresh (a client's retry after a lost answer): idempotent, a duplicate.
    clock.now = NOW + timedelta(seconds=30)
    again = post(url, body, clock)
    assert again.status_code == 200
    assert again.json()["results"] == [{"index": 0, "result": "duplicate"}]
    # Once the window is over, the replay is refused for its age.
    clock.now = NOW + timedelta(minutes=6)
    assert post(url, body, timestamp=ts).status_code == 401
    assert consent_events() == 1


def test_an_oversized_body_is_refused_by_its_length_and_by_what_is_read(door):
    url, clock = door(max_body_bytes=2048)
    big = json.dumps([signup(email=f"p{i}@example.de") for i in range(20)]).encode()
    assert len(big) > 2048
    declared = post(url, big, clock)
    assert declared.status_code == 413 and "2048" in declared.json()["error"]

    # Chunked: no Content-Length; the door counts what it reads.
    ts = str(int(NOW.timestamp()))
    chunked = requests.post(
        f"{url}/v1/events",
        data=iter([big[i : i + 500] for i in range(0, len(big), 500)]),
        headers={"X-Psync-Timestamp": ts, "X-Psync-Signature": sign(SECRET, ts, big)},
        timeout=10,
    )
    assert chunked.status_code == 413
    assert consent_events() == 0


def test_more_than_a_thousand_events_is_refused(door):
    url, clock = door()
    answer = post(url, [{"type": "consent.signup"}] * 1001, clock)
    assert answer.status_code == 413 and "1000" in answer.json()["error"]


def test_a_body_that_is_not_an_object_or_array_is_a_bad_request(door):
    url, clock = door()
    assert post(url, b"{not json", clock).status_code == 400
    assert post(url, b'"' + EMAIL.encode() + b'"', clock).json() == {
        "error": "body is neither a JSON object nor an array"
    }
    assert post(url, b"\xff\xfe", clock).status_code == 400
    assert post(url, b"[" * 100_000, clock).status_code == 400
    # One key twice: which address was meant is a guess, so nothing is taken.
    twice = b'[{"type": "consent.withdraw", "email": "' + EMAIL.encode() + b'", "email": "other@example.de"}]'
    answer = post(url, twice, clock)
    assert answer.status_code == 400
    assert answer.json() == {"error": "body is not valid JSON: a field appears twice in one object"}
    assert consent_events() == 0


def test_a_batch_with_good_and_bad_events_stores_the_good_and_names_the_bad(door):
    url, clock = door()
    batch = [
        signup(),
        signup(email="not-an-address"),
        "just a string",
        {"type": "consent.mystery", "email": EMAIL},
        signup(email="max@example.de"),
        signup(email="ines@example.de", at=(NOW + timedelta(days=1)).isoformat()),
    ]
    answer = post(url, batch, clock)
    assert answer.status_code == 200
    body = answer.json()
    assert [r["result"] for r in body["results"]] == [
        "stored",
        "rejected",
        "rejected",
        "rejected",
        "stored",
        "rejected",
    ]
    assert [r["index"] for r in body["results"]] == list(range(6))
    assert body["results"][1]["reason"].startswith("email:")
    assert body["results"][2]["reason"] == "not a JSON object"
    assert body["results"][5]["reason"] == "at: lies in the future"
    assert body["counts"] == {"stored": 2, "unchanged": 0, "duplicate": 0, "rejected": 4, "pending": 0}
    for secret in ("not-an-address", "mystery", "just a string", "ines@", "max@", "Erika"):
        assert secret not in answer.text
    assert consent_events() == 2


def test_re_posting_the_same_events_is_idempotent(door):
    url, clock = door()
    batch = [signup(), signup(email="max@example.de")]
    assert post(url, batch, clock).json()["counts"]["stored"] == 2
    clock.now += timedelta(seconds=1)  # a new signature, the same events
    assert post(url, batch, clock).json()["counts"] == {
        "stored": 0,
        "unchanged": 0,
        "duplicate": 2,
        "rejected": 0,
        "pending": 0,
    }
    assert consent_events() == 2


def test_a_confirmation_posted_before_its_signup_is_pending_and_confirms_it_when_it_comes(door):
    # The website's two requests raced: the click's arrived first.
    url, clock = door()
    click = {"type": "consent.confirm", "list": "newsletter", "email": EMAIL, "ip": "198.51.100.7"}
    first = post(url, {**click, "at": (NOW - timedelta(hours=1)).isoformat()}, clock).json()
    assert first["results"] == [
        {"index": 0, "result": "pending", "reason": "no sign-up for this list yet: kept, and applied when it arrives"}
    ]
    assert first["counts"]["pending"] == 1
    clock.now += timedelta(seconds=1)
    assert post(url, signup(), clock).json()["counts"]["stored"] == 1
    with transaction() as session:
        assert session.execute(select(ConsentRecord.state)).scalar_one() == "confirmed"


def test_concurrent_posts_of_the_same_event_store_it_exactly_once(door):
    url, clock = door()
    body = json.dumps(signup()).encode()

    def one(i: int) -> str:
        ts = str(int(NOW.timestamp()) - i)  # each its own signature
        answer = post(url, body, timestamp=ts)
        assert answer.status_code == 200, answer.text
        return answer.json()["results"][0]["result"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = sorted(pool.map(one, range(16)))
    assert outcomes == ["duplicate"] * 15 + ["stored"]
    assert consent_events() == 1


def test_a_client_over_its_rate_gets_429_with_retry_after(door):
    url, clock = door(rate_per_second=0.001, rate_burst=3)
    answers = [post(url, signup(), timestamp=str(int(NOW.timestamp()) - i)) for i in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    assert int(answers[3].headers["Retry-After"]) >= 1
    assert requests.get(f"{url}/v1/health", timeout=10).status_code == 200  # not rate-limited


def test_token_bucket_refills_with_its_clock():
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=2, clock=lambda: now[0])
    assert [buckets.take("a"), buckets.take("a")] == [0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # per client
    now[0] = 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0


def test_an_order_with_inline_documents_is_stored_encrypted_and_nothing_stays_on_disk(
    door, spool_folders, tmp_path, monkeypatch
):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where /dev/shm is missing
    url, clock = door()
    answer = post(
        url,
        [
            order("O-1"),
            order("O-2", photo={"base64": base64.b64encode(PDF_BYTES).decode()}),
            order("O-3", photo="../../etc/passwd"),
            order("O-4", photo={"base64": "not base64!"}),
            order("O-5", photo={"base64": base64.b64encode(JPEG_BYTES * 1000).decode()}),
        ],
        clock,
    )
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["result"] for r in results] == ["stored", "rejected", "rejected", "rejected", "rejected"]
    assert results[1]["reason"] == "documents.photo: content is not JPEG/PNG"
    assert results[2]["reason"] == 'documents.photo: send the document inline as {"base64": "..."}'
    assert results[3]["reason"] == "documents.photo: not valid base64"
    assert results[4]["reason"] == "documents.photo: file is larger than 4096 bytes"
    with transaction() as session:
        assert session.execute(select(func.count()).select_from(IsicOrder)).scalar_one() == 1
        stored = session.execute(select(IsicDocument)).scalars().all()
    assert len(stored) == 3
    assert all(PDF_BYTES not in d.ciphertext and JPEG_BYTES not in d.ciphertext for d in stored)
    assert spool_folders and not any(folder.exists() for folder in spool_folders)


def as_parts(event: dict, prefix: str, **files: bytes) -> tuple[dict, dict[str, bytes]]:
    """`event` (an order) with its documents as file parts named `prefix`-role; `files`
    replace a role's bytes."""
    docs = {"student_proof": PDF_BYTES, "id_copy": PNG_BYTES, "photo": JPEG_BYTES} | files
    parts = {f"{prefix}-{role}": data for role, data in docs.items()}
    return {**event, "documents": {role: {"part": f"{prefix}-{role}"} for role in docs}}, parts


def test_an_order_with_documents_as_file_parts_is_stored_encrypted_and_nothing_stays_on_disk(
    door, spool_folders, tmp_path, monkeypatch
):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where /dev/shm is missing
    url, clock = door()
    good, good_parts = as_parts(order("F-1"), "a")
    pdf_photo, pdf_parts = as_parts(order("F-2"), "b", photo=PDF_BYTES)
    too_large, large_parts = as_parts(order("F-3"), "c", photo=JPEG_BYTES * 1000)
    missing = {**order("F-4"), "documents": {**good["documents"], "photo": {"part": "nowhere"}}}
    path = {**order("F-5"), "documents": {**good["documents"], "photo": "../../etc/passwd"}}
    inline = order("F-6")  # base64 is taken in a form too
    events = [good, pdf_photo, too_large, missing, path, inline]
    answer = post_form(url, events, good_parts | pdf_parts | large_parts, SECRET, clock())
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["result"] for r in results] == ["stored", "rejected", "rejected", "rejected", "rejected", "stored"]
    assert results[1]["reason"] == "documents.photo: content is not JPEG/PNG"
    assert results[2]["reason"] == "documents.photo: file is larger than 4096 bytes"
    assert results[3]["reason"] == "documents.photo: the form has no file part of that name"
    assert results[4]["reason"] == 'documents.photo: name the document\'s file part as {"part": "..."}'
    assert "nowhere" not in answer.text and "passwd" not in answer.text
    with transaction() as session:
        orders = session.execute(select(IsicOrder.order_ref)).scalars().all()
        stored = session.execute(select(IsicDocument)).scalars().all()
    assert sorted(orders) == ["F-1", "F-6"]
    assert len(stored) == 6
    assert all(PDF_BYTES not in d.ciphertext and JPEG_BYTES not in d.ciphertext for d in stored)
    assert {d.media_type for d in stored if d.kind == "photo"} == {"image/jpeg"}
    assert spool_folders and not any(folder.exists() for folder in spool_folders)
    # The same form again, signed afresh: nothing stored twice.
    clock.now = NOW + timedelta(seconds=5)
    again = post_form(url, events, good_parts | pdf_parts | large_parts, SECRET, clock())
    assert [r["result"] for r in again.json()["results"]] == [
        "duplicate",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
        "duplicate",
    ]


def test_an_order_sent_again_through_another_form_or_place_is_a_duplicate_and_another_one_is_not(door):
    # Its documents get other names (a file part, or the place in the batch), so another
    # dedupe key: the same person, fields and bytes make it the same order all the same.
    url, clock = door()
    assert [r["result"] for r in post(url, [order("D-1")], clock).json()["results"]] == ["stored"]
    event, parts = as_parts(order("D-1"), "a")
    clock.now = NOW + timedelta(seconds=1)
    assert [r["result"] for r in post_form(url, [event], parts, SECRET, clock()).json()["results"]] == ["duplicate"]
    clock.now = NOW + timedelta(seconds=2)
    other_photo = order("D-1", photo={"base64": base64.b64encode(JPEG_BYTES[:-1] + b"y").decode()})  # same size
    results = post(url, [signup(), order("D-1"), other_photo], clock).json()["results"]
    assert [r["result"] for r in results] == ["stored", "duplicate", "rejected"]
    assert results[2]["reason"] == "order_id exists already"
    with transaction() as session:
        assert session.execute(select(func.count()).select_from(IsicDocument)).scalar_one() == 3


def test_a_form_is_signed_like_any_body_and_a_broken_form_stores_nothing(door):
    url, clock = door()
    event, parts = as_parts(order("F-9"), "a")
    body, content_type = encode_form([event], parts)
    unsigned = requests.post(f"{url}/v1/events", data=body, headers={"Content-Type": content_type}, timeout=10)
    assert unsigned.status_code == 401
    ts = str(int(NOW.timestamp()))
    tampered = body.replace(PDF_BYTES[:20], b"%PDF-1.4 something else"[:20])
    assert tampered != body
    wrong = requests.post(
        f"{url}/v1/events",
        data=tampered,
        headers={"Content-Type": content_type, "X-Psync-Timestamp": ts, "X-Psync-Signature": sign(SECRET, ts, body)},
        timeout=10,
    )
    assert wrong.status_code == 401

    def send(raw: bytes, ctype: str, at: datetime):
        stamp = str(int(at.timestamp()))
        headers = {"Content-Type": ctype, "X-Psync-Timestamp": stamp, "X-Psync-Signature": sign(SECRET, stamp, raw)}
        return requests.post(f"{url}/v1/events", data=raw, headers=headers, timeout=10)

    no_events, ctype = encode_form([], {})
    no_events = no_events.replace(b'name="events"', b'name="other"')
    assert send(no_events, ctype, NOW + timedelta(seconds=1)).json() == {"error": "the form has no events part"}
    twice = body.replace(b'name="a-photo"', b'name="a-id_copy"')
    assert send(twice, content_type, NOW + timedelta(seconds=2)).json() == {"error": "two parts of the same name"}
    odd = body.replace(b'name="a-photo"', f'name="{EMAIL}\\x"'.encode())
    answer = send(odd, content_type, NOW + timedelta(seconds=3))
    assert answer.status_code == 400 and EMAIL not in answer.text
    assert send(body, "multipart/form-data", NOW + timedelta(seconds=4)).status_code == 400  # no boundary
    truncated = send(body[: len(body) // 2], content_type, NOW + timedelta(seconds=5))
    assert truncated.status_code == 400, truncated.text
    not_json, ctype = encode_form([], {})
    not_json = not_json.replace(b"[]", b"[{")
    assert send(not_json, ctype, NOW + timedelta(seconds=6)).status_code == 400
    with transaction() as session:
        assert session.execute(select(func.count()).select_from(IsicOrder)).scalar_one() == 0


def test_health_and_the_openapi_schema(door):
    url, clock = door()
    assert requests.get(f"{url}/v1/health", timeout=10).json() == {"status": "ok"}
    schema = requests.get(f"{url}/openapi.json", timeout=10).json()
    body = schema["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"][1]["maxItems"] == 1000
    components = schema["components"]["schemas"]
    assert "ConsentSignup" in components and "IntakeEvent" in components
    photo = components["Documents"]["properties"]["photo"]["oneOf"]
    assert [v["required"] for v in photo] == [["base64"], ["part"]]
    form = schema["paths"]["/v1/events"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["events"]
    assert requests.get(f"{url}/docs", timeout=10).status_code == 200


def test_the_door_will_not_start_without_a_secret(settings, monkeypatch):
    from typer.testing import CliRunner

    from psync.cli import app

    monkeypatch.delenv("PSYNC_INTAKE_SECRET", raising=False)
    result = CliRunner().invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: intake: shared secret not configured (PSYNC_INTAKE_SECRET)"


def test_the_local_stack_gives_its_door_a_secret_once(tmp_path, monkeypatch):
    from psync.stack import Stack

    monkeypatch.delenv("PSYNC_INTAKE_SECRET", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    stack = Stack(tmp_path, tmp_path / "state", intake_port=8710)
    secret = stack.environment()["PSYNC_INTAKE_SECRET"]
    assert len(secret) == 64 and stack.environment()["PSYNC_INTAKE_SECRET"] == secret
    assert (tmp_path / "state" / "intake-secret").stat().st_mode & 0o777 == 0o600
    assert "PSYNC_INTAKE_SECRET" not in Stack(tmp_path, tmp_path / "other").environment()  # no door
    monkeypatch.setenv("PSYNC_INTAKE_SECRET", "configured")
    assert stack.environment()["PSYNC_INTAKE_SECRET"] == "configured"


def test_nothing_personal_reaches_the_logs_even_at_debug(settings, caplog):
    """uvicorn at debug with its access log, FastAPI, the intake: a batch with a person in
    good and bad events, a bad signature and an oversized body leave no personal data in any
    log record."""
    import logging

    clock = Clock(NOW)
    config = DoorConfig(
        secret=SECRET, key=TEST_KEY.encode(), document_key=Fernet.generate_key(), max_body_bytes=50_000, clock=clock
    )
    batch = [signup(), signup(email="erika.mustermann@example"), {**signup(), "first_name": "Erika\x00"}, order("O-9")]
    caplog.set_level(logging.DEBUG)
    with serve_door(config, log_level="debug", access_log=True) as url:
        assert post(url, batch, clock).status_code == 200
        assert post(url, batch, secret=b"wrong").status_code == 401
        assert post(url, [signup()] * 200, clock).status_code == 413
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "POST /v1/events" in logged  # the access log was on
    for personal in ("erika", "mustermann", "lena", "studentin", "DE89", "192.0.2.10"):
        assert personal.lower() not in logged.lower(), personal


def test_a_rights_request_comes_in_through_the_same_door(door):
    """``rights.request`` needs nothing of its own at the door: the same intake path opens it,
    a rectification's new values are validated there and stored only encrypted."""
    from sqlmodel import select as sql_select

    from models.rights import RightsRequest

    url, clock = door()
    assert post(url, signup(), clock).status_code == 200
    at = NOW.isoformat()
    events = [
        {"type": "rights.request", "right": "access", "email": EMAIL, "at": at},
        {
            "type": "rights.request",
            "right": "rectification",
            "email": EMAIL,
            "changes": {"last_name": "Neumann"},
            "at": at,
        },
        {"type": "rights.request", "right": "rectification", "email": EMAIL, "changes": {"phone": "12"}, "at": at},
    ]
    answer = post(url, events, clock)
    assert answer.status_code == 200, answer.text
    assert [r["result"] for r in answer.json()["results"]] == ["stored", "stored", "rejected"]
    assert "12" not in answer.json()["results"][2].get("reason", "").replace("changes", "")
    with transaction() as session:
        found = list(session.exec(sql_select(RightsRequest)))
    assert sorted(r.right for r in found) == ["access", "rectification"]
    assert all(b"Neumann" not in (r.changes or b"") for r in found)
