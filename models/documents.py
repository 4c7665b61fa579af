"""Uploaded documents: type by content, size bounds, encryption at rest, crypto-shredding.

A document's type is what its first bytes say (PDF, JPEG, PNG), never its name. The bytes
are stored only encrypted (Fernet: AES-128-CBC with an HMAC-SHA256 tag, from
``cryptography``). Each document has a data key of its own; the data key is stored only
wrapped (encrypted) by the master key from the settings or a Secret block, in a row of
``document_key`` apart from the document. Deleting that row destroys the only way to the
key: any copy of the ciphertext left behind (a free page, a dead PostgreSQL row version, a
saved file) is unreadable, even with the master key. Rotating the master key rewraps the
small data keys and leaves the documents as they are. Errors name the document's role,
never its path (a file name often holds the person's name).
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Iterable
from datetime import datetime

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.hmac import HMAC
from sqlalchemy import LargeBinary
from sqlmodel import Field, SQLModel

from models.types import UTCDateTime, classify, new_id, utcnow

PDF, JPEG, PNG = "application/pdf", "image/jpeg", "image/png"
_MAGIC = {PDF: b"%PDF-", JPEG: b"\xff\xd8\xff", PNG: b"\x89PNG\r\n\x1a\n"}


def sniff(data: bytes) -> str | None:
    """The media type the content shows, or None.

    >>> sniff(b"%PDF-1.7 ...")
    'application/pdf'
    >>> sniff(b"GIF89a") is None
    True
    """
    for media_type, magic in _MAGIC.items():
        if data.startswith(magic):
            return media_type
    return None


class DocumentKey(SQLModel, table=True):
    """One document's data key, wrapped by the master key; deleting the row shreds the document."""

    __tablename__ = "document_key"

    id: uuid.UUID = Field(default_factory=new_id, primary_key=True)
    wrapped: bytes = Field(sa_type=LargeBinary)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


# Key material, not data about anyone: it goes with its document (``delete_documents``).
classify(DocumentKey, not_personal=["id", "wrapped", "created_at"])


class DocumentCipher:
    """The master key(s): wraps data keys, seals and opens documents.

    `key` is one Fernet key, or several separated by commas, newest first (while rotating:
    ``PSYNC_DOCUMENT_KEY=new,old``): the first encrypts, any of them decrypts.
    """

    def __init__(self, key: bytes | str):
        text = key.decode() if isinstance(key, bytes) else str(key)
        try:
            self._fernet = MultiFernet([Fernet(part.strip()) for part in text.split(",") if part.strip()])
        except (ValueError, TypeError):
            raise ValueError("the document key is not a Fernet key (32 url-safe base64 bytes)") from None

    def encrypt(self, data: bytes) -> bytes:
        """`data` encrypted with the master key itself (small secrets such as the phone password)."""
        return self._fernet.encrypt(data)

    def decrypt(self, token: bytes) -> bytes:
        try:
            return self._fernet.decrypt(token)
        except InvalidToken:
            raise ValueError("document cannot be decrypted with this key") from None

    def rotate(self, token: bytes) -> bytes:
        """`token` encrypted again with the newest master key (the content is unchanged)."""
        try:
            return self._fernet.rotate(token)
        except InvalidToken:
            raise ValueError("document cannot be decrypted with this key") from None

    def seal(self, data: bytes) -> tuple[DocumentKey, bytes]:
        """A new data key (wrapped, as a row to store) and `data` encrypted with it."""
        data_key = Fernet.generate_key()
        return DocumentKey(wrapped=self.encrypt(data_key)), Fernet(data_key).encrypt(data)

    def seal_stream(self, pieces: Iterable[bytes]) -> tuple[DocumentKey, bytes, int]:
        """``seal`` for a document read a piece at a time: a new data key (wrapped, as a row to
        store), the document encrypted with it, and its size. The plaintext is never whole in
        memory; the ciphertext is the same Fernet token ``seal`` makes, opened alike."""
        data_key = Fernet.generate_key()
        token, size = fernet_encrypt_stream(data_key, pieces)
        return DocumentKey(wrapped=self.encrypt(data_key)), token, size

    def open(self, ciphertext: bytes, key: DocumentKey | None) -> bytes:
        """The document's bytes: with its data key, or, for a document stored before data
        keys (`key` None), with the master key directly."""
        return self.open_wrapped(ciphertext, None if key is None else key.wrapped)

    def open_wrapped(self, ciphertext: bytes, wrapped: bytes | None) -> bytes:
        """``open`` given the data key as stored (wrapped), or None for the master key."""
        if wrapped is None:
            return self.decrypt(ciphertext)
        data_key = self.decrypt(wrapped)
        try:
            return Fernet(data_key).decrypt(ciphertext)
        except InvalidToken:
            raise ValueError("document cannot be decrypted with its data key") from None


def fernet_encrypt_stream(key: bytes, pieces: Iterable[bytes]) -> tuple[bytes, int]:
    """A Fernet token of the concatenated `pieces`, built as they come: (token, plaintext size).

    What ``Fernet(key).encrypt`` makes (version, time, IV, AES-128-CBC of the PKCS7-padded
    text, HMAC-SHA256 over all of it; url-safe base64), computed piece by piece with the same
    primitives, so only the token grows in memory, never a copy of the whole plaintext.
    Base64 is written in whole 3-byte groups as they fill, which encodes the same as at once.
    """
    raw = base64.urlsafe_b64decode(key)
    signing_key, encryption_key = raw[:16], raw[16:]
    iv = os.urandom(16)
    header = b"\x80" + int(time.time()).to_bytes(8, "big") + iv
    padder = padding.PKCS7(algorithms.AES.block_size).padder()
    encryptor = Cipher(algorithms.AES(encryption_key), modes.CBC(iv)).encryptor()
    mac = HMAC(signing_key, hashes.SHA256())
    mac.update(header)
    token, pending, size = bytearray(), bytearray(header), 0

    def emit(data: bytes, last: bool = False) -> None:
        pending.extend(data)
        cut = len(pending) if last else len(pending) // 3 * 3
        token.extend(base64.urlsafe_b64encode(pending[:cut]))
        del pending[:cut]

    for piece in pieces:
        size += len(piece)
        block = encryptor.update(padder.update(piece))
        mac.update(block)
        emit(block)
    block = encryptor.update(padder.finalize()) + encryptor.finalize()
    mac.update(block)
    emit(block + mac.finalize(), last=True)
    return bytes(token), size
