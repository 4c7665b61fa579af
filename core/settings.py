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
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DATA_DIR = Path(".psync")


def _secret(owner: BaseModel, name: str) -> str | None:
    """The secret field `name` of `owner` from the environment, else from its Prefect Secret
    block (the field ``<name>_block`` names it)."""
    value: SecretStr | None = getattr(owner, name)
    if value is not None:
        return value.get_secret_value()
    block = getattr(owner, f"{name}_block", None)
    if block:
        from prefect.blocks.system import Secret

        return str(Secret.load(block).get())  # type: ignore[union-attr]  # sync_compatible: a block here, no event loop runs
    return None


class ProcessorSettings(BaseModel):
    """What every API processor's group has: its API root, its rate and one credential.

    A subclass declares `credential` (the secret field: a value, or its ``_block``) and
    `needs` (the other fields no client can be made without); ``psync check`` and the HTTP
    layer's set-up (``connectors.transport.setup``) read both, so a processor's required
    settings are said once. `jobs_need` are what its jobs need beyond a client (groups,
    services), checked by ``psync check`` only.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    base_url: str
    rate_per_second: float = Field(10.0, gt=0)

    credential: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()
    jobs_need: ClassVar[tuple[str, ...]] = ()
    # A default URL that only holds a place: the processor is not set up while it stands.
    placeholder_url: ClassVar[str | None] = None

    def secret(self, name: str | None = None) -> str | None:
        """The credential (or the secret field `name`) from the environment or its block."""
        return _secret(self, name or self.credential)

    def is_set(self, name: str) -> bool:
        """Whether field `name` has a value (the placeholder URL is none)."""
        value = getattr(self, name)
        if name == "base_url" and self.placeholder_url:
            return bool(value) and value.rstrip("/") != self.placeholder_url
        if name == self.credential:
            return bool((value is not None and value.get_secret_value()) or getattr(self, f"{name}_block", None))
        return bool(value)


class CleverReachSettings(ProcessorSettings):
    """CleverReach (seed 000): the API root; /oauth/token.php and /v3/... hang below it."""

    base_url: str = "https://rest.cleverreach.com"
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_block: str | None = None
    # The group (list) of each consent list at CleverReach.
    group_newsletter: str | None = None
    group_service_offers: str | None = None
    batch_size: int = Field(250, ge=1, le=1000)

    credential: ClassVar[str] = "client_secret"
    needs: ClassVar[tuple[str, ...]] = ("client_id",)
    jobs_need: ClassVar[tuple[str, ...]] = ("group_newsletter", "group_service_offers")

    def group(self, list_name: str) -> str | None:
        """The group of consent list `list_name` ("newsletter", "service_offers"); None when
        it is not configured or the list is not one of ours."""
        return {"newsletter": self.group_newsletter, "service_offers": self.group_service_offers}.get(list_name)


class TimifySettings(ProcessorSettings):
    """TIMIFY (seed 001): API root; /v1/... hangs below it. Company scope by `company-id`."""

    base_url: str = "https://api.timify.com"
    app_id: str | None = None
    app_secret: SecretStr | None = None
    app_secret_block: str | None = None
    company_id: str | None = None
    # The TIMIFY services a booking is made for, and our service point ids -> TIMIFY
    # resource ids (JSON in the environment: PSYNC_TIMIFY_SERVICE_POINTS='{"sp-1":"65e6..."}').
    branch_service_id: str | None = None
    video_service_id: str | None = None
    service_points: dict[str, str] = {}
    # A TIMIFY customer and their appointments are deleted at TIMIFY this many days after the
    # customer's last appointment (core.catalogue rule R06; seed 001: not held permanently).
    customer_retention_days: int = Field(30, ge=0)

    credential: ClassVar[str] = "app_secret"
    needs: ClassVar[tuple[str, ...]] = ("app_id", "company_id")
    jobs_need: ClassVar[tuple[str, ...]] = ("branch_service_id", "video_service_id", "service_points")


class FlexpertoSettings(ProcessorSettings):
    """Flexperto (video consultations, seed 001): the tenant's host, OAuth2 client credentials."""

    base_url: str = "https://tenant.live.flexperto.com"
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_block: str | None = None

    credential: ClassVar[str] = "client_secret"
    needs: ClassVar[tuple[str, ...]] = ("base_url", "client_id")
    placeholder_url: ClassVar[str | None] = "https://tenant.live.flexperto.com"


class IsicSettings(ProcessorSettings):
    """ISIC card issuer (RDS via the ISIC platform's card-issuer API, seed 003 XIV)."""

    base_url: str = "https://isic.example.invalid"
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_block: str | None = None
    # Documents go once the order and its follow-up questions are done: this long after issue.
    document_retention_days: int = Field(30, ge=0)
    max_document_bytes: int = Field(10 * 1024 * 1024, ge=1024)

    credential: ClassVar[str] = "client_secret"
    needs: ClassVar[tuple[str, ...]] = ("base_url", "client_id")
    placeholder_url: ClassVar[str | None] = "https://isic.example.invalid"


class NectSettings(ProcessorSettings):
    """Nect (identification with the eID, seed 002 5.4.2): API root; /v1/... hangs below it.
    Nect only ever receives a pseudonymous id."""

    base_url: str = "https://nect.example.invalid"
    api_key: SecretStr | None = None
    api_key_block: str | None = None

    credential: ClassVar[str] = "api_key"
    needs: ClassVar[tuple[str, ...]] = ("base_url",)
    placeholder_url: ClassVar[str | None] = "https://nect.example.invalid"


class Settings(BaseSettings):
    # A processor's variables are PSYNC_<PROCESSOR>_<FIELD>: the first "_" after the prefix
    # splits the processor's group from its field; other names are not split.
    model_config = SettingsConfigDict(
        env_prefix="PSYNC_", env_file=".env", extra="ignore", env_nested_delimiter="_", env_nested_max_split=1
    )

    database_url: str = f"sqlite:///{DATA_DIR / 'psync.db'}"
    # Where delivery batches journal their calls until they commit (flows/journal.py);
    # empty: next to the SQLite file, or under ~/.local/state/psync/calls/ for another database.
    call_journal_dir: str | None = None
    # Keyed HMAC for pseudonyms and the audit chain. Without one, a random key is created
    # once under .psync/ so a local install works; production sets it (or a Secret block).
    pseudonym_key: SecretStr | None = None
    pseudonym_key_block: str | None = None

    # One group per processor (below): PSYNC_CLEVERREACH_CLIENT_ID is ``cleverreach.client_id``.
    cleverreach: CleverReachSettings = CleverReachSettings()
    timify: TimifySettings = TimifySettings()
    flexperto: FlexpertoSettings = FlexpertoSettings()
    isic: IsicSettings = IsicSettings()
    nect: NectSettings = NectSettings()

    # Seed 001: "Die Daten des Chats werden spätestens nach 90 Tagen gelöscht."
    video_chat_retention_days: int = Field(90, ge=1, le=90)
    # Uploaded documents are encrypted at rest, each with a data key of its own wrapped by this
    # master Fernet key (urlsafe base64, 32 bytes;
    # `python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`).
    # To rotate: NEW,OLD (newest first; any opens, the first wraps), `psync documents rotate-key`.
    document_key: SecretStr | None = None
    document_key_block: str | None = None

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
    # access package, the portability export, the proof of consent) is written here, Fernet-encrypted with the
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
    # `psync run` hands its run to the resident runner listening here (`psync up` starts one;
    # psync/runner.py), else runs it in its own process; relative to the current folder.
    # Empty: always in its own process.
    runner_socket: str = ".psync/stack/runner.sock"

    # Unconfirmed double-opt-in sign-ups are erased after this many calendar days (seed 000).
    optin_expiry_days_newsletter: int = 30
    optin_expiry_days_service_offers: int = 21

    def secret(self, name: str) -> str | None:
        """The secret `name` from the environment, else from its Prefect Secret block."""
        return _secret(self, name)

    @classmethod
    def variables(cls) -> list[str]:
        """Every environment variable read, a processor group's fields included.

        >>> "PSYNC_TIMIFY_APP_ID" in Settings.variables()
        True
        """
        names = []
        for name, info in cls.model_fields.items():
            group = info.annotation
            if isinstance(group, type) and issubclass(group, ProcessorSettings):
                names += [f"PSYNC_{name}_{field}".upper() for field in group.model_fields]
            else:
                names.append(f"PSYNC_{name.upper()}")
        return names

    def processor(self, key: str) -> ProcessorSettings:
        """The settings group of API processor `key` (``cleverreach``, ``timify``, …)."""
        group = getattr(self, key, None)
        if not isinstance(group, ProcessorSettings):
            raise KeyError(f"no settings group for processor {key!r}")
        return group

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
