"""An order's uploads in the folder of the JSON-lines file: inside that folder only, type by
content, size bounds. Errors name the document's role, never its path (a file name often
holds the person's name).

Validating a line only looks at a document (its size, its first bytes): the bytes are read
when the line is stored, a piece at a time straight into encryption
(``models.documents.DocumentCipher.seal_stream``), so a file of many orders with large
uploads never has more than one document in memory, and that only encrypted.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from models.documents import sniff

PIECE = 1024 * 1024  # bytes read at a time
_HEAD = 16  # enough for every magic number sniff knows


@dataclass(frozen=True)
class Upload:
    """A document that passed the checks: where it is, what it is, how large."""

    path: Path  # resolved, inside the folder
    media_type: str
    size: int

    def pieces(self) -> Iterator[bytes]:
        """The document's bytes, a piece at a time; ValueError if it is no longer what the
        checks saw (replaced by a link, another type, another size)."""
        changed = "file changed after it was checked"
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            raise ValueError(changed) from None
        with open(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError(changed)
            size = 0
            while piece := file.read(PIECE):
                if size == 0 and sniff(piece[:_HEAD]) != self.media_type:
                    raise ValueError(changed)
                size += len(piece)
                if size > self.size:
                    raise ValueError(changed)
                yield piece
            if size != self.size:
                raise ValueError(changed)


def resolve_document(base_dir: Path, relative: str) -> Path:
    """The document named `relative` to `base_dir`, symlinks resolved; ValueError (naming no
    path) if it is not inside that folder."""
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
    return full


def check_document(base_dir: Path, relative: str, allowed: frozenset[str], max_bytes: int) -> Upload:
    """Check a document named relative to `base_dir` without reading it whole: inside the
    folder, a regular file, not empty, at most `max_bytes`, of an `allowed` type by its first
    bytes. ValueError (naming no path) if unfit."""
    full = resolve_document(base_dir, relative)
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
    try:
        with full.open("rb") as file:
            head = file.read(_HEAD)
    except OSError:
        raise ValueError("file cannot be read") from None
    media_type = sniff(head)
    if media_type not in allowed:
        names = "/".join(sorted(t.split("/")[1].upper() for t in allowed))
        raise ValueError(f"content is not {names}")
    return Upload(full, media_type, size)
