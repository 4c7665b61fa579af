"""Hostile input (issue 7): every bad intake line is rejected with a clear reason, and nothing
is stored.

For every event type, hypothesis starts from a valid event (``strategies.KINDS``) and
breaks it: a required field dropped, wrong JSON types, 10 kB–1 MB strings, control and bidi
characters, header and SQL injection, invalid e-mail addresses, phone, insurance and IBAN
numbers, bad dates, unknown fields; and, for coverage a sample may miss, a fixed catalogue of
every family on every field. Raw lines (truncated, not an object, binary, huge) and
hostile documents (too large, wrong content, paths and symlinks out of the folder) get tests
of their own; the catalogue is also posted to the HTTP door (``psync serve``) over real HTTP,
as JSON and as multipart/form-data, with hostile file parts and malformed forms. For each line: outcome "rejected", a printable reason that does not repeat
the input, the row count of every table unchanged, no file touched. Where a value may be
legal (SQL in a name is just a strange name), the line is either rejected that way or stored
verbatim. Figures go to the reliability summary (``reliability.figures``).
"""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import String, func, literal, select, union_all
from sqlmodel import SQLModel

from flows.intake import intake_lines
from models.db import transaction
from models.documents import sniff
from models.isic import IsicDocument
from psync.sandbox_env import SERVICE_POINTS

from reliability.figures import record
from reliability.strategies import (
    BOOKING_ID,
    ERASURE_POOL,
    KINDS,
    MARKER,
    ORDER_ID,
    PENDING_EMAIL,
    Kind,
    Mutation,
    apply,
    booking,
    catalogue,
    consent,
    erasure,
    erasure_email,
    isic,
    line,
    marked,
    mutations,
)
from support import JPEG_BYTES, PDF_BYTES, PNG_BYTES

LIMIT = 4096  # PSYNC_ISIC_MAX_DOCUMENT_BYTES for these tests: small, so huge files stay fast
DOC_KEY = Fernet.generate_key()
TABLES = sorted(SQLModel.metadata.tables.values(), key=lambda t: t.name)
SETTINGS = hypothesis_settings(
    max_examples=70,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
FRESH = itertools.count(1)  # fresh identifiers for each valid event that is mutated
TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def figures():
    """This module's counts, added to the reliability summary when its tests are done."""
    yield
    for name in (
        "hostile lines tried",
        "hostile lines rejected",
        "hostile lines stored (legal free text)",
        "hostile documents tried",
        "hostile documents rejected",
        "hostile events posted to the HTTP door",
        "hostile events the door rejected",
    ):
        record(name, TALLY[name])


def _is_text(column) -> bool:
    kind = column.type
    return isinstance(kind, String) or isinstance(getattr(kind, "impl", None), String)


class World:
    """A database that already holds a pending sign-up, a booking and an ISIC order, and
    an upload folder with valid documents, symlinks out of it, a FIFO and a directory."""

    def __init__(self, settings, tmp_path: Path):
        self.key = settings.hmac_key()
        self.base_dir = tmp_path / "upload"
        self.outside = tmp_path / "outside"
        self.base_dir.mkdir()
        self.outside.mkdir()
        for name, data in (("nachweis.pdf", PDF_BYTES), ("ausweis.png", PNG_BYTES), ("foto.jpg", JPEG_BYTES)):
            (self.base_dir / name).write_bytes(data)
        (self.outside / "secret.pdf").write_bytes(PDF_BYTES)
        (self.outside / "secret.jpg").write_bytes(JPEG_BYTES)
        (self.base_dir / "sub").mkdir()
        os.mkfifo(self.base_dir / "pipe.pdf")
        links = {
            "link-out.pdf": self.outside / "secret.pdf",
            "link-out.jpg": self.outside / "secret.jpg",
            "link-dir": self.outside,
            "link-passwd.pdf": Path("/etc/passwd"),
            "link-zero.jpg": Path("/dev/zero"),
            "loop-a.pdf": self.base_dir / "loop-b.pdf",
            "loop-b.pdf": self.base_dir / "loop-a.pdf",
            "link-relative-out.pdf": Path("..") / "outside" / "secret.pdf",
        }
        for name, target in links.items():
            (self.base_dir / name).symlink_to(target)
        self.erasure_pool = False
        stored = [
            *self.run(consent.NOW, consent.signup(email=PENDING_EMAIL)),
            *self.run(booking.NOW, booking.request(BOOKING_ID)),
            *self.run(isic.NOW, isic.order(ORDER_ID)),
        ]
        assert [r.outcome for r in stored] == ["stored"] * 3, stored

    def prepare(self, kind: Kind) -> None:
        """Subjects an erasure request can name (each stored request opens a new one)."""
        if kind.type in ("erasure.request", "rights.request") and not self.erasure_pool:
            signups = [erasure.signup(erasure_email(i)) for i in range(ERASURE_POOL)]
            assert {r.outcome for r in self.run(erasure.NOW, *signups)} == {"stored"}
            self.erasure_pool = True

    def run(self, now, *lines) -> list:
        lines = [line(e) if isinstance(e, dict) else e for e in lines]
        with transaction() as session:
            return intake_lines(
                session,
                self.key,
                lines,
                now=now,
                service_points=SERVICE_POINTS,
                base_dir=self.base_dir,
                document_key=DOC_KEY,
                max_document_bytes=LIMIT,
            )

    def counts(self) -> dict[str, int]:
        """Rows per table, every table of the schema, in one query."""
        query = union_all(
            *(select(literal(t.name), select(func.count()).select_from(t).scalar_subquery()) for t in TABLES)
        )
        with transaction() as session:
            return dict(session.execute(query).all())  # type: ignore[arg-type]  # rows of (name, count) pairs

    def files(self) -> dict[str, tuple]:
        """Every entry of the upload and outside folders, without following links."""
        found = {}
        for top in (self.base_dir, self.outside):
            for path in sorted(top.rglob("*")):
                info = path.lstat()
                found[str(path)] = (info.st_mode, info.st_size, info.st_mtime_ns)
        return found

    def holds(self, value: str) -> bool:
        """Whether some text column of some table holds exactly `value`."""
        with transaction() as session:
            for table in TABLES:
                for column in table.columns:
                    if _is_text(column):
                        query = select(func.count()).select_from(table).where(column == value)
                        if session.execute(query).scalar_one():
                            return True
        return False

    def newest_audit(self) -> tuple[str, str]:
        with transaction() as session:
            table = SQLModel.metadata.tables["audit_entry"]
            row = session.execute(select(table.c.action, table.c.detail).order_by(table.c.id.desc()).limit(1)).one()
            return row.action, row.detail


@pytest.fixture
def world(settings, tmp_path) -> World:
    return World(settings, tmp_path)


def assert_clear(reason: str, secrets) -> None:
    """A reason someone can act on, that repeats none of the input, on one printable line."""
    assert reason.strip(), "empty reason"
    assert reason.isprintable(), f"reason has control characters: {reason!r}"
    assert len(reason) <= 2000, f"reason of {len(reason)} characters"
    lowered = reason.casefold()
    letters = "".join(c for c in lowered if c.isalpha())
    assert MARKER not in lowered and MARKER not in letters, f"reason repeats the input: {reason!r}"
    digits = "".join(c for c in reason if c.isdigit())
    for secret in secrets:
        if isinstance(secret, str) and len(secret.strip()) >= 5:
            assert secret.casefold() not in lowered, f"reason repeats {secret[:80]!r}: {reason!r}"
            secret_digits = "".join(c for c in secret if c.isascii() and c.isdigit())
            if len(secret_digits) >= 8 and secret_digits in digits:
                raise AssertionError(f"reason repeats the number {secret_digits}: {reason!r}")


def assert_nothing_stored(world: World, before: dict, files: dict, audited: bool = False) -> None:
    """Every table as before; with `audited`, one audit row of the rejection may be new
    (a line that passed validation and was refused by its store, e.g. a personal reference)."""
    after = world.counts()
    if audited and after.get("audit_entry") == before["audit_entry"] + 1:
        action, detail = world.newest_audit()
        assert action == "intake.rejected", action
        assert_clear(detail, ())
        after["audit_entry"] -= 1
    changed = {t: (before[t], after[t]) for t in before if before[t] != after[t]}
    assert not changed, f"rows changed by a rejected line: {changed}"
    assert world.files() == files, "files changed by a rejected line"


def rejected_and_nothing_stored(world: World, now, text: str | bytes, secrets=(), audited=False) -> str:
    before, files = world.counts(), world.files()
    results = world.run(now, text)
    assert len(results) == 1, results
    [result] = results
    assert result.outcome == "rejected", f"{result.outcome}: {str(text)[:300]!r}"
    assert result.line == 1
    assert_clear(result.reason, (MARKER, *secrets))
    assert_nothing_stored(world, before, files, audited)
    return result.reason


# --- the valid events the mutations start from ----------------------------------------------


@pytest.mark.parametrize("kind_name", list(KINDS))
def test_every_valid_starting_event_is_stored(world, kind_name):
    """Without this, a mutation could be 'rejected' because its starting point was."""
    kind = KINDS[kind_name]
    world.prepare(kind)
    results = world.run(kind.now, kind.build(next(FRESH)))
    assert [(r.outcome, r.reason) for r in results] == [("stored", "")]


# --- hostile events, every type ------------------------------------------------------------

MUTATIONS = {name: mutations(kind) for name, kind in KINDS.items()}


@pytest.mark.parametrize("kind_name", list(KINDS))
@SETTINGS
@given(data=st.data())
def test_a_hostile_event_is_rejected_and_stores_nothing(world, kind_name, data):
    kind = KINDS[kind_name]
    world.prepare(kind)
    mutation: Mutation = data.draw(MUTATIONS[kind_name], label="mutation")
    event = apply(kind, mutation, next(FRESH))
    before, files = world.counts(), world.files()
    results = world.run(kind.now, event)
    assert len(results) == 1, results
    [result] = results
    TALLY["hostile lines tried"] += 1
    if result.outcome == "rejected":
        TALLY["hostile lines rejected"] += 1
        assert_clear(result.reason, (MARKER, *mutation.secrets))
        assert_nothing_stored(world, before, files, audited=not mutation.certain)
        return
    assert not mutation.certain, f"{mutation!r}: {result.outcome}"
    assert result.outcome == "stored", result
    TALLY["hostile lines stored (legal free text)"] += 1
    # Stored means stored as given: every table still there and nothing deleted, the text
    # kept verbatim (and a password only encrypted).
    assert all(n >= before[table] for table, n in world.counts().items())
    if mutation.field == "phone_password":
        assert not world.holds(mutation.value)
    else:
        assert world.holds(mutation.value), f"{mutation!r} stored, but not verbatim"


@pytest.mark.parametrize("kind_name", list(KINDS))
def test_every_family_on_every_field_is_rejected_line_by_line(world, kind_name):
    """The fixed catalogue, one file per event type: what random sampling may leave out."""
    kind = KINDS[kind_name]
    world.prepare(kind)
    cases = catalogue(kind)
    before, files = world.counts(), world.files()
    results = world.run(kind.now, *(apply(kind, m, next(FRESH)) for m in cases))
    assert [r.line for r in results] == list(range(1, len(cases) + 1))
    for mutation, result in zip(cases, results, strict=True):
        assert result.outcome == "rejected", f"{mutation!r}: {result.outcome}"
        assert_clear(result.reason, (MARKER, *mutation.secrets))
    assert_nothing_stored(world, before, files)
    TALLY["hostile lines tried"] += len(cases)
    TALLY["hostile lines rejected"] += len(cases)


@pytest.mark.parametrize(
    ("kind_name", "field"),
    [
        ("consent.signup", "first_name"),
        ("booking.request", "last_name"),
        ("isic.order", "institution"),
        ("erasure.request", "reference"),
        ("consent.signup", "source"),
    ],
)
def test_sql_in_free_text_is_stored_verbatim_and_harmless(world, kind_name, field):
    """The other half of 'rejected or stored verbatim': a strange name is a name."""
    kind = KINDS[kind_name]
    world.prepare(kind)
    value = "Robert'); DROP TABLE data_subject;--"
    before = world.counts()
    [result] = world.run(kind.now, {**kind.build(next(FRESH)), field: value})
    assert result.outcome == "stored", result
    assert world.holds(value)
    assert all(n >= before[table] for table, n in world.counts().items())


def test_multi_line_concern_is_stored_but_a_control_character_is_not(world):
    kind = KINDS["booking.request"]
    concern = "Zahnersatz\r\nBitte vormittags.\tDanke"
    [result] = world.run(kind.now, {**kind.build(next(FRESH)), "concern": concern})
    assert result.outcome == "stored" and world.holds(concern)
    reason = rejected_and_nothing_stored(world, kind.now, line({**kind.build(next(FRESH)), "concern": "a\x00b"}))
    assert reason.startswith("concern:")


# --- raw lines -----------------------------------------------------------------------------


@st.composite
def malformed_lines(draw) -> str | bytes:
    valid = line(KINDS[draw(st.sampled_from(sorted(KINDS)))].build(0))
    valid = valid.replace("@example.de", f"{MARKER}@example.de")
    family = draw(st.sampled_from(["truncated", "not an object", "binary", "deep nesting", "huge", "special"]))
    if family == "truncated":
        return valid[: draw(st.integers(1, len(valid) - 1))]
    if family == "not an object":
        scalars = st.one_of(marked, st.integers(), st.floats(allow_nan=False), st.booleans(), st.none())
        return json.dumps(draw(st.lists(scalars, max_size=4) | scalars))
    if family == "binary":
        return draw(st.binary(min_size=1, max_size=300))
    size = draw(st.integers(100_000, 3_000_000))
    if family == "deep nesting":
        shape = draw(st.sampled_from(["[", "[]", "{}", "email"]))
        return {
            "[": "[" * size,
            "[]": "[" * size + "]" * size,
            "{}": '{"a":' * (size // 5) + "1" + "}" * (size // 5),
            "email": valid[:-1] + ', "email": ' + "[" * 5000 + "]" * 5000 + "}",
        }[shape]
    if family == "huge":
        shape = draw(st.sampled_from(["digits", "nul", "text", "field", "array"]))
        if shape == "field":
            return valid[:-1] + f', "first_name": "{MARKER * (size // len(MARKER))}"}}'
        if shape == "array":
            return json.dumps([json.loads(valid)] * (size // len(valid)))
        return {"digits": "1" * size, "nul": "\x00" * size, "text": MARKER * (size // len(MARKER))}[shape]
    return draw(
        st.sampled_from(
            [
                "\ufeff" + valid,
                valid + "\x00",
                valid[:-1] + ', "duration_minutes": NaN}',
                valid[:-1] + ', "at": Infinity}',
                valid[:-1] + ', "type": "x.unknown"}',
                valid + valid,
                valid + " " + valid,
                valid.replace('"type"', '"TYPE"'),
                valid.replace(":", "="),
                "{}",
                '{"type": null}',
                valid.replace('"', "'"),
                valid[:-1] + ', "first_name": "\\ud800"}',
                valid.encode("utf-16"),
                valid.encode("latin-1", "replace") + b"\xff\xfe",
            ]
        )
    )


@SETTINGS
@given(raw=malformed_lines())
def test_a_malformed_line_is_rejected_and_stores_nothing(world, raw):
    if isinstance(raw, bytes):
        try:
            assume(raw.decode("utf-8").strip())  # a blank line is skipped, not rejected
        except UnicodeDecodeError:
            pass
    TALLY["hostile lines tried"] += 1
    rejected_and_nothing_stored(world, consent.NOW, raw)
    TALLY["hostile lines rejected"] += 1


# --- documents -----------------------------------------------------------------------------

ROLES = {"student_proof": PDF_BYTES, "id_copy": PNG_BYTES, "photo": JPEG_BYTES}
MAGIC = (b"%PDF-", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
TRAVERSAL = (
    "../outside/secret.pdf",
    "../../etc/passwd",
    "/etc/passwd",
    "sub/../../outside/secret.pdf",
    "./../outside/secret.pdf",
    "..",
    ".",
    "sub",
    "sub/",
    "..\\..\\etc\\passwd",
    "~/secret.pdf",
    "//etc/passwd",
    "file:///etc/passwd",
    "nachweis.pdf\x00.png",
    "nachweis.pdf\r\nX-A: b",
    f"missing-{MARKER}.pdf",
    "link-out.pdf",
    "link-out.jpg",
    "link-relative-out.pdf",
    "link-dir/secret.pdf",
    "link-passwd.pdf",
    "link-zero.jpg",
    "loop-a.pdf",
    "pipe.pdf",
    "upload/nachweis.pdf",
    "NACHWEIS.PDF",
    " nachweis.pdf",
)


@st.composite
def hostile_documents(draw) -> tuple[str, str, bytes | None]:
    """(role, path or file name, bytes to write there or None)."""
    role = draw(st.sampled_from(sorted(ROLES)))
    ext = draw(st.sampled_from([".pdf", ".jpg", ".png", "", ".exe"]))
    name = f"{MARKER}-{draw(st.integers(0, 10**6))}{ext}"
    magic = ROLES[role]
    family = draw(st.sampled_from(["too large", "garbage", "empty", "wrong content", "path", "absolute"]))
    if family == "too large":
        return role, name, magic + b"\0" * (LIMIT - len(magic) + draw(st.integers(1, 3 * LIMIT)))
    if family == "garbage":
        data = draw(st.binary(min_size=1, max_size=2 * LIMIT).filter(lambda b: not b.startswith(MAGIC)))
        return role, name, data
    if family == "empty":
        return role, name, b""
    if family == "wrong content":  # a photo that is a PDF, whatever its name says
        return "photo", name, draw(st.sampled_from([PDF_BYTES, b"GIF89a" + b"\0" * 20, b"<svg/>"]))
    if family == "absolute":
        return role, "{outside}/secret.pdf" if role != "photo" else "{outside}/secret.jpg", None
    return role, draw(st.sampled_from(TRAVERSAL)), None


@SETTINGS
@given(document=hostile_documents())
def test_a_hostile_document_is_rejected_and_nothing_is_written(world, document):
    role, path, data = document
    path = path.replace("{outside}", str(world.outside))
    if data is not None:
        (world.base_dir / path).write_bytes(data)
    documents = {"student_proof": "nachweis.pdf", "id_copy": "ausweis.png", "photo": "foto.jpg", role: path}
    event = isic.order(f"H-{next(FRESH)}", documents=documents)
    TALLY["hostile documents tried"] += 1
    reason = rejected_and_nothing_stored(world, isic.NOW, line(event), secrets=("secret", "passwd", path))
    assert reason.startswith(f"documents.{role}:"), reason
    TALLY["hostile documents rejected"] += 1


def test_a_symlink_out_of_the_folder_is_refused_even_to_a_valid_document(world):
    reason = rejected_and_nothing_stored(
        world,
        isic.NOW,
        line(
            isic.order(
                "H-link",
                documents={
                    "student_proof": "link-out.pdf",
                    "id_copy": "ausweis.png",
                    "photo": "foto.jpg",
                },
            )
        ),
    )
    assert reason == "documents.student_proof: must be a path relative to the JSON-lines file, inside its folder"


def test_a_document_is_typed_by_its_content_not_its_name(world):
    """A JPEG called .pdf is a JPEG: accepted where JPEG is, and stored as one."""
    (world.base_dir / "scan.pdf").write_bytes(JPEG_BYTES)
    documents = {"student_proof": "scan.pdf", "id_copy": "ausweis.png", "photo": "foto.jpg"}
    event = isic.order("H-typed", documents=documents)
    assert [r.outcome for r in world.run(isic.NOW, event)] == ["stored"]
    with transaction() as session:
        kinds = {d.kind: d.media_type for d in session.query(IsicDocument).all()}
    assert kinds["student_proof"] == sniff(JPEG_BYTES) == "image/jpeg"


def test_reason_for_an_unknown_type_or_field_does_not_repeat_it(world):
    """The two places pydantic puts input in its message: a discriminator tag, a key."""
    for event in (
        {"type": f"{MARKER}@example.de", "at": consent.NOW.isoformat()},
        {**consent.signup(email="x1@example.de"), f"x\r\nSet-Cookie: {MARKER}": 1},
        {**isic.order("H-key"), f"pin {MARKER}": "1234"},
    ):
        rejected_and_nothing_stored(world, isic.NOW, line(event))


# --- the HTTP door (psync serve) -----------------------------------------------------------


def door_config(world: World, secret: bytes, now):
    from psync.serve import DoorConfig

    from doorway import Clock

    return DoorConfig(
        secret=secret,
        key=world.key,
        document_key=DOC_KEY,
        service_points=frozenset(SERVICE_POINTS),
        max_document_bytes=LIMIT,
        rate_per_second=1000.0,
        rate_burst=1000,
        clock=Clock(now),
    )


VALID_FILES = {"nachweis.pdf", "ausweis.png", "foto.jpg"}


@pytest.mark.parametrize("door", ["json", "multipart"])
@pytest.mark.parametrize("kind_name", list(KINDS))
def test_the_catalogue_posted_to_the_http_door_is_rejected_event_by_event(world, kind_name, door):
    """The same catalogue, as one signed request over real HTTP, a JSON array or a
    multipart/form-data body: the door answers each event rejected with a clear reason, and
    stores nothing. Valid documents go as the door takes them (base64 inline, or a file part
    of the form); a mutated document value is refused by the door."""
    import base64

    from doorway import post_form, post_signed, serve_door

    kind = KINDS[kind_name]
    world.prepare(kind)
    cases = catalogue(kind)
    secret = b"hostile-door-secret"
    parts: dict[str, bytes] = {}

    def inline(event: dict, index: int) -> dict:
        documents = event.get("documents") if event.get("type") == "isic.order" else None
        if not isinstance(documents, dict):
            return event
        files = {n: p for n, p in documents.items() if isinstance(p, str) and p in VALID_FILES}
        encoded = {}
        for n, p in files.items():
            data = (world.base_dir / p).read_bytes()
            if door == "json":
                encoded[n] = {"base64": base64.b64encode(data).decode()}
            else:
                parts[f"{index}-{n}"] = data
                encoded[n] = {"part": f"{index}-{n}"}
        return {**event, "documents": {**documents, **encoded}}

    events = [inline(apply(kind, m, next(FRESH)), i) for i, m in enumerate(cases)]
    before, files = world.counts(), world.files()
    with serve_door(door_config(world, secret, kind.now)) as url:
        if door == "json":
            answer = post_signed(url, events, secret, kind.now)
        else:
            answer = post_form(url, events, parts, secret, kind.now)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["index"] for r in results] == list(range(len(cases)))
    for mutation, result in zip(cases, results, strict=True):
        assert result["result"] == "rejected", f"{mutation!r}: {result}"
        assert_clear(result["reason"], (MARKER, *mutation.secrets))
    assert MARKER not in answer.text
    # Inlined, the valid documents pass: the other fields' mutations reach the validation.
    assert any(not r["reason"].startswith("documents.") for r in results)
    assert_nothing_stored(world, before, files)
    TALLY["hostile events posted to the HTTP door"] += len(cases)
    TALLY["hostile events the door rejected"] += len(cases)


DOOR_SECRET = b"hostile-door-secret"


@pytest.fixture
def isic_door(world):
    """One door for all of a test's examples (started once, not per example)."""
    from doorway import serve_door

    with serve_door(door_config(world, DOOR_SECRET, isic.NOW)) as url:
        yield url


@SETTINGS
@given(document=hostile_documents())
def test_a_hostile_file_part_is_rejected_and_nothing_is_written(world, isic_door, document):
    """The hostile documents' bytes as file parts of a multipart/form-data body (a path has no
    file part: it is refused as a document value, over HTTP the door reads no file)."""
    from doorway import post_form

    role, path, data = document
    secret = DOOR_SECRET
    valid = {"student_proof": "nachweis.pdf", "id_copy": "ausweis.png", "photo": "foto.jpg"}
    parts = {f"p-{r}": (world.base_dir / name).read_bytes() for r, name in valid.items()}
    documents: dict = {r: {"part": f"p-{r}"} for r in valid}
    if data is not None:
        parts[f"p-{role}"] = data
    else:
        documents[role] = path.replace("{outside}", str(world.outside))
    event = isic.order(f"H-{next(FRESH)}", documents=documents)
    before, files = world.counts(), world.files()
    TALLY["hostile documents tried"] += 1
    answer = post_form(isic_door, [event], parts, secret, isic.NOW)
    assert answer.status_code == 200, answer.text
    [result] = answer.json()["results"]
    assert result["result"] == "rejected", result
    assert result["reason"].startswith(f"documents.{role}:"), result
    assert_clear(result["reason"], (MARKER, "secret", "passwd", path))
    assert MARKER not in answer.text
    assert_nothing_stored(world, before, files)
    TALLY["hostile documents rejected"] += 1


FORM_ATTACKS = {
    "no events part": lambda body: body.replace(b'name="events"', b'name="event"'),
    "a part name with a line break": lambda body: body.replace(
        b'name="p-photo"', b'name="p\r\nX-A: ' + MARKER.encode() + b'"'
    ),
    "a part name with a marker and a quote": lambda body: body.replace(
        b'name="p-photo"', b'name="' + MARKER.encode() + b'\\" x"'
    ),
    "two events parts": lambda body: body.replace(b'name="p-photo"', b'name="events"'),
    "two parts of one name": lambda body: body.replace(b'name="p-photo"', b'name="p-id_copy"'),
    "cut short": lambda body: body[: len(body) * 2 // 3],
    "boundary missing at the end": lambda body: body.rstrip(b"-\r\n"),
    "no part headers": lambda body: body.replace(b"Content-Disposition", b"X-" + MARKER.encode()),
    "events not JSON": lambda body: body.replace(b'[{"type"', b"[" + MARKER.encode() + b'{"type"'),
}


@pytest.mark.parametrize("attack", list(FORM_ATTACKS))
def test_a_malformed_form_is_refused_whole_and_stores_nothing(world, attack):
    """A form the door cannot read is a 400 that names no input, and nothing is stored."""
    import requests

    from psync.serve import sign

    from doorway import encode_form, serve_door

    secret = b"hostile-door-secret"
    valid = {"student_proof": "nachweis.pdf", "id_copy": "ausweis.png", "photo": "foto.jpg"}
    parts = {f"p-{r}": (world.base_dir / name).read_bytes() for r, name in valid.items()}
    event = isic.order(f"H-{next(FRESH)}", documents={r: {"part": f"p-{r}"} for r in valid})
    body, content_type = encode_form([event], parts)
    hostile = FORM_ATTACKS[attack](body)
    assert hostile != body
    before, files = world.counts(), world.files()
    ts = str(int(isic.NOW.timestamp()))
    headers = {"Content-Type": content_type, "X-Psync-Timestamp": ts, "X-Psync-Signature": sign(secret, ts, hostile)}
    with serve_door(door_config(world, secret, isic.NOW)) as url:
        answer = requests.post(f"{url}/v1/events", data=hostile, headers=headers, timeout=60)
    assert answer.status_code == 400, answer.text
    assert_clear(answer.json()["error"], (MARKER,))
    assert MARKER not in answer.text
    assert_nothing_stored(world, before, files)
    TALLY["hostile events posted to the HTTP door"] += 1
    TALLY["hostile events the door rejected"] += 1
