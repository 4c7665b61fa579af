"""``psync serve``: the website's HTTP door to intake (``POST /v1/events``).

The same intake as ``psync intake`` (``flows.intake.intake_lines``): the same event types,
validation, receipts and idempotency, so an event posted twice, or posted and also fed as a
file, is stored once. What this module adds is the door itself:

- **Signature.** The client sends ``X-Psync-Timestamp: <Unix seconds>`` and
  ``X-Psync-Signature: sha256=<hex>``, the HMAC-SHA256 of ``<timestamp>.<raw body>`` under
  the shared secret ``PSYNC_INTAKE_SECRET``; compared in constant time. A timestamp more than
  ``intake_max_skew_seconds`` (5 minutes) off the server's clock is refused, so a captured
  request cannot be sent again later; within the window, a signature already seen is refused
  too (409: sign again with a fresh timestamp). Receipts make even a replay that got past
  both (another server process) store nothing twice.
- **Size.** ``Content-Length`` and the bytes actually read are held to
  ``intake_max_body_bytes`` (413); at most 1,000 events a request (413).
- **Rate.** A token bucket per client address (429 with ``Retry-After``).
- **Documents.** An ``isic.order`` carries its documents inline, base64 in the JSON:
  ``"documents": {"photo": {"base64": "..."}, ...}``; or the body is ``multipart/form-data``
  with the events (one object or an array, as JSON) in the part ``events`` and each document
  in a file part of its own, which the event names: ``"documents": {"photo": {"part":
  "photo-1"}, ...}``. Either way they are written into a private temporary folder
  (memory-backed ``/dev/shm`` where there is one; a file part streamed there, held to the
  size limit while it is written), read from there by the file intake's own checks (type by
  content, the same size limits), stored encrypted, and the folder is removed before the
  answer goes out. A path is refused: the door never reads the server's files. The
  signature covers the raw body, multipart or JSON alike.

Answers: 200 with one result per event (``stored``, ``unchanged``, ``duplicate``,
``pending`` for a confirmation, reschedule or cancellation whose sign-up, booking or order
is not known yet, or
``rejected`` with the reason, which never repeats the input), 400 for a body that is not a
JSON object or array (or not a well-formed form with one ``events`` part), 401 without a valid signature, 409 for a replayed signature, 413, 429.
``GET /v1/health`` is open; the OpenAPI schema is at ``/openapi.json``, its UI at ``/docs``.

Example (a client)::

    body = json.dumps(events).encode()
    ts = str(int(time.time()))
    sig = hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    requests.post(url + "/v1/events", data=body, headers={
        "Content-Type": "application/json",
        "X-Psync-Timestamp": ts, "X-Psync-Signature": f"sha256={sig}"})

    # Documents as file parts: sign the encoded form's bytes.
    body, content_type = urllib3.encode_multipart_formdata({
        "events": json.dumps([{..., "documents": {"photo": {"part": "p1"}, ...}}]),
        "p1": ("foto.jpg", photo_bytes, "image/jpeg"), ...})
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from models.types import utcnow

MAX_EVENTS = 1000
SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")
TIMESTAMP = re.compile(r"[0-9]{1,12}")
DOCUMENT_KINDS = ("student_proof", "id_copy", "photo")
# Clients remembered by the rate limiter; past this, the full (idle) buckets are forgotten.
MAX_CLIENTS = 10_000
# Signatures remembered against replay; past this the oldest go (receipts still hold).
MAX_SEEN = 100_000
# A form holds the events and at most three documents for each of them.
MAX_PARTS = 1 + 3 * MAX_EVENTS
PART_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")


@dataclass
class DoorConfig:
    """What the door needs besides the database; `clock` is settable for tests."""

    secret: bytes
    key: bytes
    document_key: bytes
    service_points: frozenset[str] = frozenset()
    max_document_bytes: int = 10 * 1024 * 1024
    max_body_bytes: int = 48 * 1024 * 1024
    max_skew_seconds: int = 300
    rate_per_second: float = 5.0
    rate_burst: int = 20
    clock: Callable[[], datetime] = utcnow

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("intake: no shared secret (PSYNC_INTAKE_SECRET)")

    @classmethod
    def from_settings(cls, settings, clock: Callable[[], datetime] | None = None) -> DoorConfig:
        """The door's configuration from the one settings object; ValueError without a secret."""
        secret = settings.secret("intake_secret")
        if not secret:
            raise ValueError("intake: shared secret not configured (PSYNC_INTAKE_SECRET)")
        return cls(
            secret=secret.encode(),
            key=settings.hmac_key(),
            document_key=settings.document_key_bytes(),
            service_points=frozenset(settings.timify.service_points),
            max_document_bytes=settings.isic.max_document_bytes,
            max_body_bytes=settings.intake_max_body_bytes,
            max_skew_seconds=settings.intake_max_skew_seconds,
            rate_per_second=settings.intake_rate_per_second,
            rate_burst=settings.intake_rate_burst,
            clock=clock or utcnow,
        )


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Psync-Signature`` value for `body` sent at `timestamp` (Unix seconds, text).

    >>> sign(b"s", "1700000000", b"{}")[:15]
    'sha256=e9232c99'
    """
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class TokenBuckets:
    """One token bucket per client: `burst` requests at once, refilled at `rate` a second."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 if `client` may go on (a token is taken), else the seconds until it may."""
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens < 1:
                self._buckets[client] = (tokens, now)
                return (1 - tokens) / self.rate
            self._buckets[client] = (tokens - 1, now)
            if len(self._buckets) > MAX_CLIENTS:
                self._forget_idle(now)
            return 0.0

    def _forget_idle(self, now: float) -> None:
        full = [c for c, (t, at) in self._buckets.items() if t + (now - at) * self.rate >= self.burst]
        for client in full:
            del self._buckets[client]


class SeenSignatures:
    """Signatures accepted within the time window: an exact replay is refused."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()  # signature -> expires (Unix s)
        self._lock = threading.Lock()

    def first_use(self, signature: str, now: float, expires: float) -> bool:
        """Record `signature`; False if it was seen before and has not expired."""
        with self._lock:
            while self._seen and next(iter(self._seen.values())) < now:
                self._seen.popitem(last=False)
            if signature in self._seen:
                return False
            self._seen[signature] = expires
            if len(self._seen) > MAX_SEEN:
                self._seen.popitem(last=False)
            return True


class _Refused(Exception):
    def __init__(self, status: int, error: str, headers: dict[str, str] | None = None):
        self.status, self.error, self.headers = status, error, headers or {}


def _refuse(exc: _Refused) -> JSONResponse:
    return JSONResponse({"error": exc.error}, status_code=exc.status, headers=exc.headers)


def create_app(config: DoorConfig) -> FastAPI:
    """The door as an ASGI app (``psync serve`` runs it under uvicorn; tests too)."""
    from intake.lines import OUTCOMES  # intake (pydantic models, SQLModel) loads with the app

    app = FastAPI(
        title="processor-sync intake",
        version="1",
        description="The website's events, signed with the shared secret: X-Psync-Timestamp "
        "(Unix seconds) and X-Psync-Signature (sha256=HMAC-SHA256 of '<timestamp>.<raw body>').",
    )
    buckets = TokenBuckets(config.rate_per_second, config.rate_burst)
    seen = SeenSignatures()
    # One intake transaction at a time in this process: posts of the same event then meet
    # as stored and duplicate instead of racing on the receipts' unique keys (another
    # process's race is retried once, see _store).
    intake_lock = threading.Lock()

    @app.get("/v1/health", summary="Liveness and database reachability")
    def health() -> JSONResponse:
        from sqlalchemy import text

        from models.db import get_engine

        try:
            with get_engine().connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception:  # noqa: BLE001 - whatever the database's failure, health says unavailable
            return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.post(
        "/v1/events",
        summary="Hand over one event or an array of up to 1,000",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"$ref": "#/components/schemas/IntakeEvent"},
                                {
                                    "type": "array",
                                    "maxItems": MAX_EVENTS,
                                    "items": {"$ref": "#/components/schemas/IntakeEvent"},
                                },
                            ],
                        }
                    },
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["events"],
                            "properties": {
                                "events": {
                                    "type": "string",
                                    "contentMediaType": "application/json",
                                    "description": "One event or an array of up to 1,000, as JSON; an "
                                    'isic.order names each document\'s file part: {"part": "<name>"}',
                                },
                            },
                            "additionalProperties": {"type": "string", "format": "binary"},
                        }
                    },
                },
            }
        },
        responses={
            200: {"description": "One result per event, in order: stored, unchanged, duplicate, pending or rejected"},
            400: {"description": "The body is not a JSON object or array, or not a form with one events part"},
            401: {"description": "Missing or invalid signature, or a timestamp outside the window"},
            409: {"description": "This signature was used before: sign again with a fresh timestamp"},
            413: {"description": "Body over the size limit, or more than 1,000 events"},
            429: {"description": "Too many requests from this client; see Retry-After"},
        },
    )
    async def post_events(request: Request) -> JSONResponse:
        try:
            client = request.client.host if request.client else "unknown"
            wait = buckets.take(client)
            if wait:
                raise _Refused(429, "too many requests", {"Retry-After": str(max(1, round(wait + 0.5)))})
            body = await _read_body(request, config.max_body_bytes)
            _check_signature(config, seen, request.headers, body)
            boundary = _form_boundary(request.headers.get("content-type", ""))
            events = _parse(body) if boundary is None else None
            form = (body, boundary) if boundary is not None else None
            results = await run_in_threadpool(_store, config, intake_lock, events, form)
        except _Refused as exc:
            return _refuse(exc)
        return JSONResponse(
            {
                "results": results,
                "counts": {k: sum(r["result"] == k for r in results) for k in OUTCOMES},
            }
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(_event_schemas())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
    return app


def _event_schemas() -> dict[str, Any]:
    """The intake events' JSON Schema as OpenAPI components, documents in their HTTP form."""
    from intake.lines import EVENT_ADAPTER

    schema = EVENT_ADAPTER.json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    components = schema.pop("$defs", {})
    components["IntakeEvent"] = schema
    inline = {
        "oneOf": [
            {
                "type": "object",
                "required": ["base64"],
                "additionalProperties": False,
                "properties": {"base64": {"type": "string", "contentEncoding": "base64"}},
            },
            {
                "type": "object",
                "required": ["part"],
                "additionalProperties": False,
                "properties": {"part": {"type": "string", "description": "a file part of a multipart/form-data body"}},
            },
        ]
    }
    if "Documents" in components:
        components["Documents"]["description"] = (
            "Each document inline, base64-encoded, or (multipart/form-data) the name of its file part; "
            "paths are refused over HTTP"
        )
        for name in components["Documents"].get("properties", {}):
            components["Documents"]["properties"][name] = inline
    return components


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _Refused(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise _Refused(413, f"body larger than {limit} bytes")
    # Counted while read as well: a chunked body, or a Content-Length that understates.
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _Refused(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_signature(config: DoorConfig, seen: SeenSignatures, headers, body: bytes) -> None:
    timestamp, signature = headers.get("x-psync-timestamp"), headers.get("x-psync-signature")
    if not timestamp or not signature:
        raise _Refused(401, "missing X-Psync-Timestamp or X-Psync-Signature")
    if not TIMESTAMP.fullmatch(timestamp):
        raise _Refused(401, "X-Psync-Timestamp is not Unix seconds")
    now = config.clock().timestamp()
    if abs(now - int(timestamp)) > config.max_skew_seconds:
        raise _Refused(401, f"X-Psync-Timestamp is more than {config.max_skew_seconds} s off the server's clock")
    given = SIGNATURE.fullmatch(signature.strip())
    expected = sign(config.secret, timestamp, body)
    # compare_digest on equal-length ASCII: its time does not depend on where they differ.
    if not given or not hmac.compare_digest(f"sha256={given.group(1).lower()}", expected):
        raise _Refused(401, "invalid signature")
    if not seen.first_use(expected, now, int(timestamp) + config.max_skew_seconds):
        raise _Refused(409, "this signature was used before; sign again with a fresh timestamp")


def _parse(body: bytes) -> list[Any]:
    from intake.lines import DuplicateKey, loads_strict

    try:
        data = loads_strict(body)
    except DuplicateKey as exc:
        raise _Refused(400, f"body is not valid JSON: {exc}") from None
    except (ValueError, RecursionError):  # also not UTF-8, or nested too deep
        raise _Refused(400, "body is not valid JSON") from None
    if isinstance(data, dict):
        return [data]
    if not isinstance(data, list):
        raise _Refused(400, "body is neither a JSON object nor an array")
    if len(data) > MAX_EVENTS:
        raise _Refused(413, f"more than {MAX_EVENTS} events in one request")
    return data


def _form_boundary(content_type: str) -> bytes | None:
    """The boundary of a ``multipart/form-data`` body; None for any other body (JSON)."""
    from python_multipart.multipart import parse_options_header

    media_type, options = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        return None
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise _Refused(400, "multipart/form-data without a boundary")
    return boundary


@dataclass
class _Part:
    """A document's file part, as written into the request's folder."""

    file: str  # its name in the folder: ours, never the client's
    size: int = 0
    too_large: bool = False


class _Form:
    """A ``multipart/form-data`` body parsed as it streams: the ``events`` part kept (it is
    JSON), every other part written into `folder`, held to `max_bytes` while written."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder, self.max_bytes = folder, max_bytes
        self.events: bytes | None = None
        self.parts: dict[str, _Part] = {}
        self.error: str | None = None
        self.ended = False  # the closing boundary was read: a truncated body is refused
        self._headers: dict[bytes, bytes] = {}
        self._field, self._value = b"", b""
        self._name: str | None = None
        self._text: list[bytes] | None = None
        self._out: Any = None
        self._part: _Part | None = None

    def callbacks(self) -> dict[str, Callable]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: setattr(self, "_field", self._field + data[start:end]),
            "on_header_value": lambda data, start, end: setattr(self, "_value", self._value + data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": lambda: setattr(self, "ended", True),
        }

    def _fail(self, error: str) -> None:
        self.error = self.error or error

    def _begin(self) -> None:
        self._headers, self._name, self._text, self._part = {}, None, None, None

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        raw_name = options.get(b"name", b"")
        name = raw_name.decode("latin-1")
        if disposition != b"form-data" or not PART_NAME.fullmatch(name):
            return self._fail("every part needs a plain name (letters, digits, . _ : -)")
        if name in self.parts or (name == "events" and self.events is not None):
            return self._fail("two parts of the same name")
        if len(self.parts) >= MAX_PARTS:
            return self._fail(f"more than {MAX_PARTS} parts")
        self._name = name
        if name == "events":
            self._text = []
            return None
        self._part = self.parts[name] = _Part(f"part-{len(self.parts)}")
        path = self.folder / self._part.file
        self._out = open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")
        return None

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.error or self._name is None:
            return
        if self._text is not None:
            self._text.append(data[start:end])
            return
        part = self._part
        assert part is not None
        if part.too_large:
            return
        part.size += end - start
        if part.size > self.max_bytes:
            # Not written further, and what was is removed at once: the limit holds on disk too.
            part.too_large = True
            self._out.close()
            self._out = None
            (self.folder / part.file).unlink()
            return
        self._out.write(data[start:end])

    def _end(self) -> None:
        if self._text is not None:
            self.events = b"".join(self._text)
        if self._out is not None:
            self._out.close()
        self._text, self._out, self._part, self._name = None, None, None, None

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def _read_form(body: bytes, boundary: bytes, folder: Path, max_bytes: int) -> tuple[list[Any], dict[str, _Part]]:
    """The events and the file parts of a ``multipart/form-data`` body; _Refused (400) when
    it is not a well-formed form with one ``events`` part."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser

    form = _Form(folder, max_bytes)
    parser = MultipartParser(boundary, form.callbacks())  # type: ignore[arg-type]  # the callbacks' TypedDict
    try:
        for start in range(0, len(body), 64 * 1024):
            parser.write(body[start : start + 64 * 1024])
            if form.error:
                break
        parser.finalize()
    except MultipartParseError:
        form._fail("body is not valid multipart/form-data")
    finally:
        form.close()
    if not (form.error or form.ended):
        form._fail("body is not valid multipart/form-data (it ends before its closing boundary)")
    if form.error:
        raise _Refused(400, form.error)
    if form.events is None:
        raise _Refused(400, "the form has no events part")
    return _parse(form.events), form.parts


def _store(
    config: DoorConfig, lock: threading.Lock, events: list[Any] | None, form: tuple[bytes, bytes] | None = None
) -> list[dict[str, Any]]:
    """Run the file intake on `events` (or those of `form`: body and boundary); one result
    per event, by index. _Refused for a form that cannot be read."""
    from sqlalchemy.exc import IntegrityError

    from flows.intake import intake_lines
    from models.db import transaction

    shm = Path("/dev/shm")
    folder = Path(
        tempfile.mkdtemp(prefix="psync-intake-", dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None)
    )
    try:
        parts: dict[str, _Part] | None = None
        if form is not None:
            events, parts = _read_form(*form, folder, config.max_document_bytes)
        assert events is not None
        results: dict[int, dict[str, Any]] = {}
        lines: list[str] = []
        index_of: list[int] = []  # intake line number - 1 -> event index
        for index, event in enumerate(events):
            try:
                lines.append(json.dumps(_inline_documents(event, index, folder, config.max_document_bytes, parts)))
                index_of.append(index)
            except ValueError as exc:
                results[index] = {"index": index, "result": "rejected", "reason": str(exc)}
        for attempt in (1, 2):
            try:
                with lock, transaction() as session:
                    stored = intake_lines(
                        session,
                        config.key,
                        lines,
                        now=config.clock(),
                        service_points=config.service_points,
                        base_dir=folder,
                        document_key=config.document_key,
                        max_document_bytes=config.max_document_bytes,
                    )
                break
            except IntegrityError:
                # Another server process stored one of these events meanwhile; a second try
                # (a new transaction) finds its receipts and reports them as duplicates.
                if attempt == 2:
                    raise
        for r in stored:
            index = index_of[r.line - 1]
            results[index] = {"index": index, "result": r.outcome, **({"reason": r.reason} if r.reason else {})}
        return [results[i] for i in sorted(results)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _inline_documents(
    event: Any, index: int, folder: Path, max_bytes: int, parts: dict[str, _Part] | None = None
) -> Any:
    """`event` with its documents named by their file under `folder`: base64 ones written
    there, file parts (of a form: `parts`) already are.

    ValueError (a reason without the input) for a document that is neither ``{"base64": ...}``
    nor, in a form, ``{"part": ...}`` naming one of its file parts. Anything else about the
    event is left to the intake's validation.
    """
    if not isinstance(event, dict) or event.get("type") != "isic.order" or not isinstance(event.get("documents"), dict):
        return event
    documents = {}
    for kind, value in event["documents"].items():
        if kind not in DOCUMENT_KINDS:
            documents[kind] = value  # refused by the intake as an unknown field
            continue
        if parts is not None and isinstance(value, dict) and set(value) == {"part"}:
            part = parts.get(value["part"]) if isinstance(value["part"], str) else None
            if part is None:
                raise ValueError(f"documents.{kind}: the form has no file part of that name")
            if part.too_large:
                raise ValueError(f"documents.{kind}: file is larger than {max_bytes} bytes")
            documents[kind] = part.file
            continue
        if parts is not None and not (
            isinstance(value, dict) and set(value) == {"base64"} and isinstance(value["base64"], str)
        ):
            raise ValueError(f'documents.{kind}: name the document\'s file part as {{"part": "..."}}')
        if not (isinstance(value, dict) and set(value) == {"base64"} and isinstance(value["base64"], str)):
            raise ValueError(f'documents.{kind}: send the document inline as {{"base64": "..."}}')
        encoded = value["base64"]
        # Refused before decoding when even the decoded size must be over the limit.
        if len(encoded) // 4 * 3 > max_bytes + 3:
            raise ValueError(f"documents.{kind}: file is larger than {max_bytes} bytes")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"documents.{kind}: not valid base64") from None
        name = f"{index}-{kind}"
        path = folder / name
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
            out.write(data)
        documents[kind] = name
    return {**event, "documents": documents}


def serve(host: str, port: int, config: DoorConfig) -> None:
    """Serve the door under uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(create_app(config), host=host, port=port, log_level="info", access_log=True)
