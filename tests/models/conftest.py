"""Fixtures of the model tests."""

from __future__ import annotations

import pytest

from support import JPEG_BYTES, PDF_BYTES, PNG_BYTES


@pytest.fixture
def docs(tmp_path):
    """A folder with a student-ID order's three uploads, as an intake file refers to them."""
    (tmp_path / "nachweis.pdf").write_bytes(PDF_BYTES)
    (tmp_path / "ausweis.png").write_bytes(PNG_BYTES)
    (tmp_path / "foto.jpg").write_bytes(JPEG_BYTES)
    return tmp_path
