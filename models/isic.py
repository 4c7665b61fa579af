"""Student-ID (ISIC) orders (seed 003, XIV): the order, its documents, what the issuer did.

Fields named in the seed are kept until the order is cancelled or erased; the phone
password is kept only encrypted and never leaves; online-banking credentials are refused at
intake and so never exist here. Each change takes the next number of the ``isic`` counter,
so the forwarding reads "everything after my cursor".
"""

from __future__ import annotations

import enum
import uuid
from datetime import date, datetime
from typing import NamedTuple

from sqlalchemy import LargeBinary, bindparam, delete, func
from sqlmodel import Field, Relationship, Session, SQLModel, col, select

from models.db import skip_locked
from models.documents import DocumentCipher, DocumentKey
from models.restriction import restricted_subject
from models.subjects import DataSubject
from models.types import UTCDateTime, classify, new_id, personal_columns, utcnow


class OrderStatus(enum.StrEnum):
    received = "received"  # stored, not yet at the issuer
    forwarded = "forwarded"  # cardholder, photo and card request sent
    issued = "issued"  # the issuer reports the card ACTIVE
    cancelled = "cancelled"


class DocumentKind(enum.StrEnum):
    student_proof = "student_proof"  # Nachweis des Schüler- oder Studentenstatus
    id_copy = "id_copy"  # Kopie des Personalausweises
    photo = "photo"  # Passfoto, the only document the issuer receives


class IsicOrder(SQLModel, table=True):
    __tablename__ = "isic_order"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    # The portal's order id: our cardholderId at the issuer (not personal).
    order_ref: str = Field(unique=True, max_length=50)
    subject_id: uuid.UUID = Field(foreign_key="data_subject.id", index=True)
    status: str = Field(default=OrderStatus.received, max_length=12, index=True)
    seq: int = Field(index=True)

    # The seed's fields; cleared on cancellation and erasure.
    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    birth_date: date | None = None
    postal_code: str | None = Field(default=None, max_length=5)
    iban: str | None = Field(default=None, max_length=34)
    institution: str | None = Field(default=None, max_length=200)
    student_status: str | None = Field(default=None, max_length=10)
    phone_password_enc: bytes | None = Field(default=None, sa_type=LargeBinary)

    # At the issuer.
    cardholder_set_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    photo_set_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    card_number: str | None = Field(default=None, max_length=40)
    card_status: str | None = Field(default=None, max_length=12)
    card_has_photo: bool | None = None
    issued_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    cardholder_deletion_requested_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    cardholder_deleted_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    # At the controller.
    documents_purge_due: date | None = Field(default=None, index=True)
    documents_purged_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    cancelled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    fields_erased_at: datetime | None = Field(default=None, sa_type=UTCDateTime)

    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)

    subject: DataSubject = Relationship()

    @property
    def purpose(self) -> str:
        """The register purpose of this order at the issuer."""
        return f"student-id:{self.order_ref}"

    def erase_fields(self, now: datetime) -> None:
        """Drop every field of the order classified personal (names, IBAN, card number, …);
        the ids and dates stay."""
        for column in personal_columns(IsicOrder.__table__):  # type: ignore[attr-defined]  # SQLModel declares no __table__; SQLAlchemy sets it
            setattr(self, column.key, None)
        self.fields_erased_at = now


classify(
    IsicOrder,
    personal=[
        "first_name",
        "last_name",
        "birth_date",
        "postal_code",
        "iban",
        "institution",
        "student_status",
        "phone_password_enc",
        "card_number",
    ],
    pseudonymous=["id", "order_ref", "subject_id"],
    not_personal=[
        "status",
        "seq",
        "cardholder_set_at",
        "photo_set_at",
        "card_status",
        "card_has_photo",
        "issued_at",
        "cardholder_deletion_requested_at",
        "cardholder_deleted_at",
        "documents_purge_due",
        "documents_purged_at",
        "cancelled_at",
        "fields_erased_at",
        "created_at",
        "updated_at",
    ],
)


class IsicDocument(SQLModel, table=True):
    __tablename__ = "isic_document"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    order_id: uuid.UUID = Field(foreign_key="isic_order.id", index=True)
    kind: str = Field(max_length=20)  # a DocumentKind
    media_type: str = Field(max_length=40)
    size: int
    # Encrypted with the document's own data key (``key``); before revision 0006, with the
    # master key directly (``key_id`` None) until ``rotate_document_keys`` converts it.
    ciphertext: bytes = Field(sa_type=LargeBinary)
    key_id: uuid.UUID | None = Field(default=None, foreign_key="document_key.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)

    order: IsicOrder = Relationship()
    key: DocumentKey = Relationship()  # None for a document stored before data keys


# The document itself is personal: it goes as a row (``delete_documents``), never as a column.
classify(
    IsicDocument,
    personal=["ciphertext"],
    pseudonymous=["order_id"],
    not_personal=["id", "kind", "media_type", "size", "key_id", "created_at"],
)


def changed_since(session: Session, after: int, limit: int) -> list[IsicOrder]:
    query = select(IsicOrder).where(col(IsicOrder.seq) > after).order_by(col(IsicOrder.seq)).limit(limit)
    return list(session.exec(query))


def count_changed_since(session: Session, after: int) -> int:
    return session.exec(select(func.count()).where(IsicOrder.seq > after)).one()


def by_status(session: Session, status: OrderStatus, after: int, limit: int) -> list[IsicOrder]:
    """Orders in `status` after seq `after`, claimed (``skip_locked``): workers following
    the issuer's status at once each take other orders."""
    query = (
        select(IsicOrder)
        .where(col(IsicOrder.status) == status, col(IsicOrder.seq) > after)
        .order_by(col(IsicOrder.seq))
        .limit(limit)
    )
    return list(session.exec(skip_locked(query, IsicOrder)))


def count_by_status(session: Session, status: OrderStatus) -> int:
    return session.exec(select(func.count()).where(IsicOrder.status == status)).one()


_DELETION_PENDING = (
    col(IsicOrder.cardholder_deletion_requested_at).is_not(None),
    col(IsicOrder.cardholder_deleted_at).is_(None),
)


def deletions_pending(session: Session, after: int, limit: int) -> list[IsicOrder]:
    """Orders whose cardholder deletion the issuer accepted but has not yet done, claimed
    (``skip_locked``): one worker reads each back and records it."""
    query = (
        select(IsicOrder)
        .where(*_DELETION_PENDING, col(IsicOrder.seq) > after)
        .order_by(col(IsicOrder.seq))
        .limit(limit)
    )
    return list(session.exec(skip_locked(query, IsicOrder)))


def count_deletions_pending(session: Session) -> int:
    return session.exec(select(func.count()).where(*_DELETION_PENDING)).one()


def documents_due(session: Session, today: date, limit: int) -> list[IsicOrder]:
    """Orders whose uploads are due for deletion by `today` (not a restricted person's),
    claimed (``skip_locked``): a second worker purging at once takes others, and finds none
    once all are held."""
    query = (
        select(IsicOrder)
        .where(
            col(IsicOrder.documents_purge_due) <= today,
            col(IsicOrder.documents_purged_at).is_(None),
            ~restricted_subject(col(IsicOrder.subject_id)),  # kept while restricted (Art. 18)
        )
        .order_by(col(IsicOrder.seq))
        .limit(limit)
    )
    return list(session.exec(skip_locked(query, IsicOrder)))


class SealedPhoto(NamedTuple):
    """An order's photo as stored: its media type, ciphertext and wrapped data key (None: a
    document stored before data keys)."""

    media_type: str
    ciphertext: bytes
    wrapped_key: bytes | None

    def open(self, cipher: DocumentCipher) -> bytes:
        """The photo's bytes (ValueError when the key does not fit)."""
        return cipher.open_wrapped(self.ciphertext, self.wrapped_key)


# Built once: a statement made per order cost more than the query itself.
_PHOTO = (
    select(IsicDocument.media_type, IsicDocument.ciphertext, IsicDocument.key_id, DocumentKey.wrapped)
    .outerjoin(DocumentKey, col(DocumentKey.id) == IsicDocument.key_id)
    .where(IsicDocument.order_id == bindparam("order_id"), IsicDocument.kind == DocumentKind.photo)
    .limit(1)
)


def sealed_photo(session: Session, order_id: uuid.UUID) -> SealedPhoto | None:
    """The order's photo, still encrypted; None when it is gone (purged, or never there).

    One statement for the document and its data key, read through the session's connection:
    the batch's pending changes to its orders are not flushed for it (they go at the
    commit, one statement per kind of change), and no ORM object holds the ciphertext. The
    caller decrypts (``SealedPhoto.open``) wherever it likes, e.g. outside a lock.
    """
    row = session.connection().execute(_PHOTO, {"order_id": order_id}).first()
    if row is None:
        return None
    media_type, ciphertext, key_id, wrapped = row
    if key_id is not None and wrapped is None:
        raise ValueError("the document's data key was destroyed")
    return SealedPhoto(media_type, ciphertext, wrapped)


def open_document(session: Session, document: IsicDocument, cipher: DocumentCipher) -> bytes:
    """The document's bytes (ValueError when its key is gone or does not fit)."""
    key = None
    if document.key_id is not None:
        key = session.get(DocumentKey, document.key_id)
        if key is None:
            raise ValueError("the document's data key was destroyed")
    return cipher.open(document.ciphertext, key)


def delete_documents(session: Session, order: IsicOrder) -> bool:
    """Delete every document of the order and destroy its data key (crypto-shredding);
    True when neither is left (read back)."""
    key_ids = [k for k in session.exec(select(IsicDocument.key_id).where(IsicDocument.order_id == order.id)) if k]
    session.execute(delete(IsicDocument).where(col(IsicDocument.order_id) == order.id))
    if key_ids:
        session.execute(delete(DocumentKey).where(col(DocumentKey.id).in_(key_ids)))
    left = session.exec(select(func.count()).select_from(IsicDocument).where(IsicDocument.order_id == order.id)).one()
    if key_ids:
        left += session.exec(
            select(func.count()).select_from(DocumentKey).where(col(DocumentKey.id).in_(key_ids))
        ).one()
    return left == 0


def rotate_document_keys(session: Session, cipher: DocumentCipher, chunk: int = 500) -> dict[str, int]:
    """Bring everything the master key protects under the newest master key (``cipher``
    built from ``new,old``); returns counts. Does not commit.

    Data keys are rewrapped (a few hundred bytes each; the documents stay as they are),
    phone passwords re-encrypted, and each document stored before data keys (encrypted with
    the master key itself) is given a data key of its own: that one is rewritten, once.
    Afterwards the old master key can be removed from ``PSYNC_DOCUMENT_KEY``.
    """
    counts = {"keys_rewrapped": 0, "documents_given_a_key": 0, "phone_passwords": 0}
    after = None
    while True:  # in id order, a chunk at a time: the rows are few bytes each, but many
        query = select(DocumentKey).order_by(col(DocumentKey.id)).limit(chunk)
        keys = session.exec(query if after is None else query.where(DocumentKey.id > after)).all()
        if not keys:
            break
        for key in keys:
            key.wrapped = cipher.rotate(key.wrapped)
        counts["keys_rewrapped"] += len(keys)
        after = keys[-1].id
        session.flush()
    while True:
        legacy = session.exec(select(IsicDocument).where(col(IsicDocument.key_id).is_(None)).limit(chunk)).all()
        if not legacy:
            break
        for document in legacy:
            key, document.ciphertext = cipher.seal(cipher.decrypt(document.ciphertext))
            session.add(key)
            document.key = key
        counts["documents_given_a_key"] += len(legacy)
        session.flush()
    orders = session.exec(select(IsicOrder).where(col(IsicOrder.phone_password_enc).is_not(None)))
    for order in orders:
        assert order.phone_password_enc is not None
        order.phone_password_enc = cipher.rotate(order.phone_password_enc)
        counts["phone_passwords"] += 1
    session.flush()
    return counts
