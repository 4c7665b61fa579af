"""Credentials may come from Prefect Secret blocks instead of the environment."""

from __future__ import annotations

import pytest
from prefect.blocks.system import Secret

from core.settings import get_settings

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_client_secret_and_pseudonym_key_from_secret_blocks(settings, monkeypatch):
    Secret(value="from-the-block").save("psync-cr-secret", overwrite=True)
    Secret(value="key-from-block").save("psync-pseudonym-key", overwrite=True)
    monkeypatch.delenv("PSYNC_CLEVERREACH_CLIENT_SECRET")
    monkeypatch.delenv("PSYNC_PSEUDONYM_KEY")
    monkeypatch.setenv("PSYNC_CLEVERREACH_CLIENT_SECRET_BLOCK", "psync-cr-secret")
    monkeypatch.setenv("PSYNC_PSEUDONYM_KEY_BLOCK", "psync-pseudonym-key")
    get_settings.cache_clear()
    current = get_settings()
    assert current.cleverreach.secret() == "from-the-block"
    assert current.hmac_key() == b"key-from-block"


def test_the_environment_wins_over_a_block(settings, monkeypatch):
    monkeypatch.setenv("PSYNC_CLEVERREACH_CLIENT_SECRET_BLOCK", "does-not-exist")
    get_settings.cache_clear()
    assert get_settings().cleverreach.secret() == "sandbox-secret"
