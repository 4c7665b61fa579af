"""The one settings object. Nothing else in the project reads the environment.

Every field comes from a ``PSYNC_``-prefixed environment variable (or a ``.env`` file);
secrets may instead name a Prefect Secret block (``PSYNC_CLEVERREACH_CLIENT_SECRET_BLOCK``).

Example::

    PSYNC_DATABASE_URL=postgresql+psycopg://psync@db/psync psync db upgrade
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DATA_DIR = Path(".psync")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PSYNC_", env_file=".env", extra="ignore")

    database_url: str = f"sqlite:///{DATA_DIR / 'psync.db'}"
    # Where delivery batches journal their calls until they commit (flows/journal.py);
    # empty: next to the SQLite file, or under ~/.local/state/psync/calls/ for another database.
    call_journal_dir: str | None = None
    # Keyed HMAC for pseudonyms and the audit chain. Without one, a random key is created
    # once under .psync/ so a local install works; production sets it (or a Secret block).
    pseudonym_key: SecretStr | None = None
    pseudonym_key_block: str | None = None

    # CleverReach: the API root; /oauth/token.php and /v3/... hang below it.
    cleverreach_base_url: str = "https://rest.cleverreach.com"
    cleverreach_client_id: str | None = None
    cleverreach_client_secret: SecretStr | None = None
    cleverreach_client_secret_block: str | None = None
    cleverreach_group_newsletter: str | None = None
    cleverreach_group_service_offers: str | None = None
    cleverreach_batch_size: int = Field(250, ge=1, le=1000)
    cleverreach_rate_per_second: float = Field(10.0, gt=0)

    # TIMIFY (seed 001): API root; /v1/... hangs below it. Company scope by `company-id`.
    timify_base_url: str = "https://api.timify.com"
    timify_app_id: str | None = None
    timify_app_secret: SecretStr | None = None
    timify_app_secret_block: str | None = None
    timify_company_id: str | None = None
    # The TIMIFY services a booking is made for, and our service point ids -> TIMIFY
    # resource ids (JSON in the environment: PSYNC_TIMIFY_SERVICE_POINTS='{"sp-1":"65e6..."}').
    timify_branch_service_id: str | None = None
    timify_video_service_id: str | None = None
    timify_service_points: dict[str, str] = {}
    timify_rate_per_second: float = Field(10.0, gt=0)
    # A TIMIFY customer and their appointments are deleted at TIMIFY this many days after the
    # customer's last appointment (core.catalogue rule R06; seed 001: not held permanently).
    timify_customer_retention_days: int = Field(30, ge=0)

    # Flexperto (video consultations, seed 001): the tenant's host, OAuth2 client credentials.
    flexperto_base_url: str = "https://tenant.live.flexperto.com"
    flexperto_client_id: str | None = None
    flexperto_client_secret: SecretStr | None = None
    flexperto_client_secret_block: str | None = None
    flexperto_rate_per_second: float = Field(10.0, gt=0)
    # Seed 001: "Die Daten des Chats werden spätestens nach 90 Tagen gelöscht."
    video_chat_retention_days: int = Field(90, ge=1, le=90)

    # ISIC card issuer (RDS via the ISIC platform's card-issuer API, seed 003 XIV).
    isic_base_url: str = "https://isic.example.invalid"
    isic_client_id: str | None = None
    isic_client_secret: SecretStr | None = None
    isic_client_secret_block: str | None = None
    isic_rate_per_second: float = Field(10.0, gt=0)
    # Uploaded documents are encrypted at rest, each with a data key of its own wrapped by this
    # master Fernet key (urlsafe base64, 32 bytes;
    # `python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`).
    # To rotate: NEW,OLD (newest first; any opens, the first wraps), `psync documents rotate-key`.
    document_key: SecretStr | None = None
    document_key_block: str | None = None
    # Documents go once the order and its follow-up questions are done: this long after issue.
    isic_document_retention_days: int = Field(30, ge=0)
    isic_max_document_bytes: int = Field(10 * 1024 * 1024, ge=1024)

    # Nect (identification with the eID, seed 002 5.4.2): API root; /v1/... hangs below it.
    # Nect only ever receives a pseudonymous id.
    nect_base_url: str = "https://nect.example.invalid"
    nect_api_key: SecretStr | None = None
    nect_api_key_block: str | None = None
    nect_rate_per_second: float = Field(10.0, gt=0)

    # Erasure (Art. 17/19). Holds: "processor" or "processor:purpose-prefix" ->
    # {"reason": "...", "days": N} (JSON); manual processors (no API): name -> to whom the
    # request goes. A run leases its tasks for `claim_minutes`; an accepted deletion that is
    # not done after `reissue_days` is asked for again.
    erasure_holds: dict[str, dict] = {}
    erasure_manual_processors: dict[str, str] = {}
    erasure_hold_recheck_days: int = Field(7, ge=1)
    erasure_claim_minutes: int = Field(15, ge=1)
    erasure_reissue_days: int = Field(7, ge=1)
    # A manual erasure request (no API: USU, Emilie, …) not confirmed within this many days
    # is flagged for a reminder, and again every as many days after.
    erasure_manual_reminder_days: int = Field(14, ge=1)

    # Data-subject rights (Art. 15, 20; flows/rights.py): what is handed to the person (the
    # access package, the portability export) is written here, Fernet-encrypted with the
    # document key, and deleted this many days after it was written (follow-up-rights-requests).
    # Empty: .psync/outbox.
    rights_outbox: Path | None = None
    rights_outbox_days: int = Field(30, ge=1, le=365)

    # The audit trail's anchor outside the database: after each flow run the head (rows, last
    # hash, time) is appended as a JSON line to this file, which belongs on other storage
    # than the database (another host's mount, WORM storage), and/or written as a Prefect
    # artifact (key ``audit-anchor``). `psync audit verify` compares the trail with it.
    audit_anchor: Path | None = None
    audit_anchor_artifact: bool = False

    # HTTP: (connect, read) seconds. Connect is short because a dead host should fail fast;
    # read is long enough for a 1000-receiver upsert.
    http_connect_timeout: float = 5.0
    http_read_timeout: float = 60.0
    http_max_attempts: int = Field(5, ge=1)
    http_max_retry_seconds: float = 120.0
    http_retry_after_cap: float = 60.0
    # The most calls a batch keeps on the wire at once (fewer while answers come fast:
    # flows.common.Pace): each person's calls stay in order on one worker, up to this many
    # people at a time. The processor's rate (PSYNC_*_RATE_PER_SECOND,
    # one bucket per processor and process) caps the pace; this only has to be at least
    # rate × answer time (50/s at 100 ms: 5) for a job to reach its rate. 1: one at a time.
    http_in_flight: int = Field(8, ge=1, le=64)

    # The website's HTTP door (`psync serve`): requests are signed with this shared secret
    # (HMAC-SHA256 of "<timestamp>.<body>"); without one the door does not start. A body is at
    # most `intake_max_body_bytes` (three documents at the ISIC limit, base64, fit in 48 MiB);
    # each client address gets `intake_rate_burst` requests at once, refilled at
    # `intake_rate_per_second`.
    intake_secret: SecretStr | None = None
    intake_secret_block: str | None = None
    intake_max_body_bytes: int = Field(48 * 1024 * 1024, ge=1024)
    intake_rate_per_second: float = Field(5.0, gt=0)
    intake_rate_burst: int = Field(20, ge=1)
    intake_max_skew_seconds: int = Field(300, ge=1, le=3600)

    # Where the technical and organisational measures (Art. 32) are described: the generated
    # Art. 30 record (`psync docs record`) points to it.
    toms_reference: str = "TOM-Dokumentation des Verantwortlichen (Art. 32 DSGVO)"

    # Every psync command prints a failure's traceback, not only its one line (as --debug does).
    debug: bool = False

    # Unconfirmed double-opt-in sign-ups are erased after this many calendar days (seed 000).
    optin_expiry_days_newsletter: int = 30
    optin_expiry_days_service_offers: int = 21

    def secret(self, name: str) -> str | None:
        """The secret `name` from the environment, else from its Prefect Secret block."""
        value: SecretStr | None = getattr(self, name)
        if value is not None:
            return value.get_secret_value()
        block = getattr(self, f"{name}_block", None)
        if block:
            from prefect.blocks.system import Secret

            return str(Secret.load(block).get())  # type: ignore[union-attr]  # sync_compatible: a block here, no event loop runs
        return None

    def outbox_dir(self) -> Path:
        """The rights outbox (``rights_outbox``, default .psync/outbox)."""
        return self.rights_outbox if self.rights_outbox is not None else DATA_DIR / "outbox"

    def hmac_key(self) -> bytes:
        """The pseudonym/audit key; created once under .psync/ when none is configured."""
        return self._key("pseudonym_key", "pseudonym.key", lambda: secrets.token_hex(32).encode())

    def document_key_bytes(self) -> bytes:
        """The Fernet key for documents at rest; created once under .psync/ when none is set.

        Production sets PSYNC_DOCUMENT_KEY (or a Secret block) and keeps it away from the
        database's backups; the local file only makes a fresh checkout work.
        """
        from cryptography.fernet import Fernet

        return self._key("document_key", "document.key", Fernet.generate_key)

    def _key(self, name: str, filename: str, generate: Callable[[], bytes]) -> bytes:
        configured = self.secret(name)
        if configured:
            return configured.encode()
        path = DATA_DIR / filename
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(generate())
            path.chmod(0o600)
        return path.read_bytes().strip()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings, read once per process (tests call ``get_settings.cache_clear()``)."""
    return Settings()
