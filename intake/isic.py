"""Intake of student-ID orders (seed 003, XIV): ``isic.order`` with its documents, ``isic.cancel``.

Documents are named by paths relative to the JSON-lines file; they are read, checked by
content (PDF, JPEG, PNG) and size, and stored only encrypted. Online-banking credentials
are refused with a reason of their own: the seed offers them "wahlweise", but the issuer
needs them for nothing, so we never hold them.

Validation context: ``{"now", "base_dir", "max_document_bytes"}``.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from schwifty import IBAN
from sqlmodel import Session, select

from intake.documents import Upload, check_document
from intake.receipts import ReceiptStore, erased_reason, ignored
from intake.types import FIELD_NAME, Applied, Email, EventBase, NotYetKnown, context_now, lenient
from models.audit import AuditEvent
from models.bookings import BERLIN
from models.consent import describe_time
from models.documents import JPEG, PDF, PNG, DocumentCipher
from models.isic import DocumentKind, IsicDocument, IsicOrder, OrderStatus, open_document
from models.subject_index import SubjectIndex, erased_before
from models.types import event_key

OrderId = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,49}$", description="the portal's order id")
ALLOWED_TYPES = {
    DocumentKind.student_proof: frozenset({PDF, JPEG, PNG}),
    DocumentKind.id_copy: frozenset({PDF, JPEG, PNG}),
    DocumentKind.photo: frozenset({JPEG, PNG}),
}
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
PHOTO_MAX_BYTES = 2 * 1024 * 1024  # what the issuer accepts for a passport photo
BANKING_WORDS = ("online_banking", "onlinebanking", "banking", "pin", "tan")


class OrderRejected(ValueError):
    """The event does not fit the order's state; the reason is safe to show."""


class UnknownOrder(OrderRejected, NotYetKnown):
    """A cancellation of an order not known (yet)."""


class Documents(BaseModel):
    """Paths relative to the JSON-lines file."""

    model_config = ConfigDict(extra="forbid")

    student_proof: str = Field(min_length=1, max_length=500, description="PDF, JPEG or PNG")
    id_copy: str = Field(min_length=1, max_length=500, description="PDF, JPEG or PNG")
    photo: str = Field(min_length=1, max_length=500, description="JPEG or PNG")


class IsicOrderEvent(EventBase):
    """An ISIC order from the portal, with its uploads."""

    type: Literal["isic.order"]
    order_id: str = OrderId
    first_name: str = Field(min_length=1, max_length=200)
    last_name: str = Field(min_length=1, max_length=200)
    birth_date: date
    email: Email
    postal_code: str = Field(pattern=r"^[0-9]{5}$", description="German postal code")
    iban: str = Field(max_length=42)
    institution: str = Field(min_length=1, max_length=200)
    student_status: Literal["student", "pupil"] = "student"
    phone_password: SecretStr | None = Field(default=None, max_length=64, description="never forwarded")
    documents: Documents

    _files: dict[str, Upload] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _no_banking_credentials(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in data:
                lowered = str(name).lower()
                if any(word == lowered or lowered.startswith(word) for word in BANKING_WORDS):
                    # Refused by name, before anything else: these are never stored anywhere.
                    # The key is input too: named only when it looks like a field name.
                    shown = f" {name!r}" if FIELD_NAME.fullmatch(str(name)) else ""
                    raise ValueError(f"online-banking credentials are never accepted; remove field{shown}")
        return data

    @field_validator("iban")
    @classmethod
    def _iban(cls, value: str) -> str:
        try:
            return IBAN(value).compact
        except ValueError:
            raise ValueError("not a valid IBAN (format or check digits)") from None

    @field_validator("birth_date")
    @classmethod
    def _plausible_birth_date(cls, value: date, info: ValidationInfo) -> date:
        # ISIC is for pupils and students: 10 to 100 years old is generous.
        if lenient(info):
            return value
        today = (context_now(info) or datetime.now(BERLIN)).astimezone(BERLIN).date()
        if not today - timedelta(days=365 * 100) <= value <= today - timedelta(days=365 * 10):
            raise ValueError("is not a plausible birth date for a pupil or student")
        return value

    @model_validator(mode="after")
    def _read_documents(self, info: ValidationInfo) -> IsicOrderEvent:
        if lenient(info):
            return self
        context = info.context or {}
        base_dir: Path | None = context.get("base_dir")
        if base_dir is None:
            raise ValueError("documents: the folder of the JSON-lines file is not known")
        max_bytes = context.get("max_document_bytes", DEFAULT_MAX_BYTES)
        for kind, allowed in ALLOWED_TYPES.items():
            try:
                limit = min(max_bytes, PHOTO_MAX_BYTES) if kind == DocumentKind.photo else max_bytes
                self._files[kind] = check_document(base_dir, getattr(self.documents, kind), allowed, limit)
            except ValueError as exc:
                raise ValueError(f"documents.{kind}: {exc}") from None
        return self


class IsicCancel(EventBase):
    """The customer cancelled the order (the only way to object, seed 003 XIV 5)."""

    type: Literal["isic.cancel"]
    order_id: str = OrderId


IsicIntakeEvent = IsicOrderEvent | IsicCancel
_FIELDS = ("first_name", "last_name", "birth_date", "postal_code", "iban", "institution", "student_status")


class IsicStore(ReceiptStore):
    """Applies ISIC events of one chunk; the chunk's orders are fetched up front.

    A cancellation is final, whatever its time: it is the customer's only way to object. An
    order whose data was erased takes no more changes; an order dated at or before its
    person's erasure restores nothing.
    """

    table, ref_column, counter = IsicOrder, "order_ref", "isic"
    pending_kinds = frozenset({"isic.cancel"})

    def __init__(self, session: Session, key: bytes, subjects: SubjectIndex, cipher: DocumentCipher | None):
        super().__init__(session, key, subjects)
        self.cipher = cipher

    @staticmethod
    def ref_of(event: IsicIntakeEvent) -> str:
        return event.order_id

    def key_of(self, event: IsicIntakeEvent) -> str:
        # The documents' paths, not their bytes, make the key: the same line is the same event.
        return event_key(self.key, event.model_dump_json(exclude={"phone_password"}))

    def _apply(self, event: IsicIntakeEvent, order: IsicOrder | None, seq: int) -> Applied:
        if isinstance(event, IsicOrderEvent):
            if order is not None:
                if self._resent(event, order):
                    return Applied("duplicate")
                raise OrderRejected("order_id exists already")
            if self.cipher is None:
                raise OrderRejected("no document key configured (PSYNC_DOCUMENT_KEY)")
            subject = self.subjects.find(event.email, None, event.at)
            if erased_before(subject, event.at):
                assert subject is not None and subject.erased_at is not None
                reason = erased_reason(subject.erased_at)
                return ignored(event.type, "erased", reason, subject.pseudonym, f"order={event.order_id}")
            order = self._create(event, seq)
            return Applied("stored", self._audit("isic.ordered", order))
        if order is None:
            raise UnknownOrder("unknown order_id")
        if order.status == OrderStatus.cancelled:
            when = order.cancelled_at or order.updated_at
            return Applied("unchanged", reason=f"already cancelled (at {describe_time(when)})")
        if order.fields_erased_at is not None:  # erased while at the issuer (erasure.py)
            return ignored(
                event.type,
                "erased",
                "this order's data was erased; nothing to cancel",
                self.pseudonyms[order.subject_id],
                f"order={order.order_ref}",
            )
        order.status, order.seq, order.cancelled_at, order.updated_at = (
            OrderStatus.cancelled,
            seq,
            event.at,
            event.at,
        )
        return Applied("stored", self._audit("isic.cancelled", order))

    def _resent(self, event: IsicOrderEvent, order: IsicOrder) -> bool:
        """Whether `event` is the stored order sent again under another key: through the
        other door, or at another place in an HTTP batch (its documents then have other
        names, ``psync.serve``). It is when it names the same person and fields and, while
        the documents are held, documents of the same bytes; an order cancelled or erased
        since keeps nothing to compare, and a resent one is rejected as before."""
        if order.fields_erased_at is not None or self.cipher is None:
            return False
        subject = self.subjects.find(event.email, None, event.at)
        if subject is None or subject.id != order.subject_id:
            return False
        if any(getattr(order, name) != getattr(event, name) for name in _FIELDS):
            return False
        if order.documents_purged_at is not None:
            return True  # forwarded and purged: the fields are what is left to compare
        # What each document is first, its bytes (one at a time) only where that agrees.
        columns = (IsicDocument.kind, IsicDocument.id, IsicDocument.media_type, IsicDocument.size)
        stored = {
            kind: rest for kind, *rest in self.session.exec(select(*columns).where(IsicDocument.order_id == order.id))
        }
        for kind, upload in event._files.items():
            document_id, media_type, size = stored.get(kind, (None, None, None))
            if document_id is None or (media_type, size) != (upload.media_type, upload.size):
                return False
            sent = hashlib.sha256()
            try:
                for piece in upload.pieces():
                    sent.update(piece)
                document = self.session.get(IsicDocument, document_id)
                assert document is not None
                held = hashlib.sha256(open_document(self.session, document, self.cipher)).digest()
            except ValueError:
                return False
            self.session.expunge(document)  # its ciphertext goes now, not with the session
            if held != sent.digest():
                return False
        return True

    def _create(self, event: IsicOrderEvent, seq: int) -> IsicOrder:
        assert self.cipher is not None
        # Each document read from disk a piece at a time into its encryption, before anything
        # is added: one that changed since it was checked rejects the line whole. A data key
        # per document: deleting it shreds the document.
        sealed = []
        for kind, upload in event._files.items():
            try:
                key, ciphertext, size = self.cipher.seal_stream(upload.pieces())
            except ValueError as exc:
                raise OrderRejected(f"documents.{kind}: {exc}") from None
            sealed.append((kind, upload.media_type, size, ciphertext, key))
        # New data the person gave: it brings an erased subject back, with nothing old.
        subject = self.subjects.resolve(event.email, None, event.at)
        password = event.phone_password.get_secret_value().encode() if event.phone_password else None
        order = IsicOrder(
            order_ref=event.order_id,
            subject_id=subject.id,
            seq=seq,
            phone_password_enc=self.cipher.encrypt(password) if password else None,
            created_at=event.at,
            updated_at=event.at,
            **{name: getattr(event, name) for name in _FIELDS},
        )
        self.session.add(order)
        for kind, media_type, size, ciphertext, key in sealed:
            self.session.add(
                IsicDocument(  # type: ignore[call-arg]  # order_id comes from `order` when flushed
                    order=order,
                    kind=kind,
                    media_type=media_type,
                    size=size,
                    ciphertext=ciphertext,
                    key=key,
                )
            )
        # Written now, so the session holds no ciphertext until the end of the chunk: memory
        # stays flat however many orders with large uploads a chunk has.
        self.session.flush()
        self.remember(order, subject.pseudonym)
        return order

    def _audit(self, action: str, order: IsicOrder) -> AuditEvent:
        return AuditEvent(
            action,
            "recorded",
            subject=self.pseudonyms[order.subject_id],
            detail=f"order={order.order_ref}",
        )
