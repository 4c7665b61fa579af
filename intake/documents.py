"""Reading an order's uploads from the folder of the JSON-lines file: inside that folder
only, type by content, size bounds. Errors name the document's role, never its path (a file
name often holds the person's name)."""

from __future__ import annotations

import os
from pathlib import Path

from models.documents import sniff


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
