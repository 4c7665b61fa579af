"""Uploaded documents: type by content, size bounds, encryption at rest.

A document's type is what its first bytes say (PDF, JPEG, PNG), never its name. The bytes
are stored only encrypted (Fernet: AES-128-CBC with an HMAC-SHA256 tag, from
``cryptography``), with the key from the settings or a Secret block. Errors name the
document's role, never its path (a file name often holds the person's name).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

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


def read_document(base_dir: Path, relative: str, allowed: frozenset[str], max_bytes: int) -> tuple[str, bytes]:
    """Read a document named relative to `base_dir`; (media type, bytes). ValueError if unfit."""
    path = Path(relative)
    outside = "must be a path relative to the JSON-lines file, inside its folder"
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(outside)
    try:
        # Resolved, so that a symlink inside the folder cannot lead out of it.
        full = Path(os.path.realpath(base_dir / path))
    except ValueError:  # a NUL in the name
        raise ValueError("file not found") from None
    if not full.is_relative_to(os.path.realpath(base_dir)):
        raise ValueError(outside)
    try:
        size = full.stat().st_size
    except OSError:
        raise ValueError("file not found") from None
    if not full.is_file():
        raise ValueError("not a file")
    if size == 0:
        raise ValueError("file is empty")
    if size > max_bytes:
        raise ValueError(f"file is larger than {max_bytes} bytes")
    data = full.read_bytes()
    media_type = sniff(data)
    if media_type not in allowed:
        names = "/".join(sorted(t.split("/")[1].upper() for t in allowed))
        raise ValueError(f"content is not {names}")
    return media_type, data


class DocumentCipher:
    """Encrypts and decrypts document bytes with one Fernet key."""

    def __init__(self, key: bytes | str):
        try:
            self._fernet = Fernet(key)
        except (ValueError, TypeError):
            raise ValueError("the document key is not a Fernet key (32 url-safe base64 bytes)") from None

    def encrypt(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def decrypt(self, token: bytes) -> bytes:
        try:
            return self._fernet.decrypt(token)
        except InvalidToken:
            raise ValueError("document cannot be decrypted with this key") from None
