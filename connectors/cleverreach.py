"""CleverReach REST API v3: the newsletter tool (seed 000).

- Base URL setting: ``PSYNC_CLEVERREACH_BASE_URL`` (API root; ``/oauth/token.php`` and
  ``/v3/...`` hang below it). Sandbox: ``http://127.0.0.1:8700/cleverreach``.
- Auth: OAuth2 client credentials, HTTP Basic ``client_id:client_secret`` at
  ``/oauth/token.php``; ``Authorization: Bearer`` token, honour ``expires_in``, refresh on 401.
- Endpoints: ``groups.json``; ``groups.json/{gid}/receivers/upsertplus``;
  ``groups.json/{gid}/receivers[/{email|id}[/deactivate]]`` (pages 0-based);
  ``receivers/delete.json`` (bulk, account-wide).
- Batch limit: 250 by default, at most 1000; a 413 halves the batch and tries again.
- Fields it may receive: ``ALLOWED_FIELDS`` per list, from ``core.catalogue``. The newsletter list has no link
  to the CRM, so it never receives the insurance number.
- Erasure: ``DELETE groups.json/{gid}/receivers/{id}`` per group (``true``), or bulk
  ``receivers/delete.json``. Verified by ``GET groups.json/{gid}/receivers/{email}`` → 404
  (some API versions answer an empty list: also "absent").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import orjson
import requests

from connectors.erasure import VERIFIED, NotVerified, Target
from connectors.transport import (
    FatalError,
    HttpClient,
    path,
    setup,
    token_client,
)
from core import catalogue

PROCESSOR = "cleverreach"
MAX_BATCH = 1000
DEFAULT_BATCH = 250
PAGE_SIZE = 500

# What each list may carry to CleverReach: top-level receiver keys, and the keys allowed
# inside global_attributes / attributes, as the catalogue declares them (core.catalogue).
# Anything else is a programming error and is refused.
ALLOWED_FIELDS: Mapping[str, Mapping[str, frozenset[str]]] = {
    name: catalogue.nested_fields(PROCESSOR, f"consent:{name}") for name in ("newsletter", "service_offers")
}


_NESTED = ("global_attributes", "attributes")
_TOP_LEVEL = {name: fields["receiver"] | set(_NESTED) for name, fields in ALLOWED_FIELDS.items()}
_JSON = {"Content-Type": "application/json"}


def check_allowed(list_name: str, receiver: Mapping[str, Any]) -> None:
    """Raise ValueError naming the field when `receiver` holds anything the list may not get.

    >>> check_allowed("newsletter", {"email": "a@b.de", "attributes": {"insurance_number": "x"}})
    Traceback (most recent call last):
    ...
    ValueError: field attributes.insurance_number is not allowed for list newsletter
    """
    allowed = ALLOWED_FIELDS[list_name]
    # Set arithmetic first (this runs for every receiver of every batch); the loop below
    # only runs to name the offending field.
    if _TOP_LEVEL[list_name].issuperset(receiver) and all(
        allowed[key].issuperset(receiver[key]) for key in _NESTED if key in receiver
    ):
        return
    for key, value in receiver.items():
        if key in _NESTED:
            for inner in value:
                if inner not in allowed[key]:
                    raise ValueError(f"field {key}.{inner} is not allowed for list {list_name}")
        elif key not in allowed["receiver"]:
            raise ValueError(f"field {key} is not allowed for list {list_name}")


def check_allowed_many(list_name: str, receivers: Sequence[Mapping[str, Any]]) -> None:
    """``check_allowed`` for a batch: the union of the receivers' fields is checked once
    (a set union runs in C; a check per receiver cost a tenth of the upsert's client time),
    and only a batch that holds a field too many is walked to name it.

    >>> check_allowed_many("newsletter", [{"email": "a@b.de"}, {"email": "c@d.de", "iban": "x"}])
    Traceback (most recent call last):
    ...
    ValueError: field iban is not allowed for list newsletter
    """
    allowed = ALLOWED_FIELDS[list_name]
    fields: set[str] = set().union(*receivers)
    if _TOP_LEVEL[list_name].issuperset(fields) and all(
        allowed[key].issuperset(set().union(*(r[key] for r in receivers if key in r)))
        for key in _NESTED
        if key in fields
    ):
        return
    for receiver in receivers:
        check_allowed(list_name, receiver)


class CleverReach:
    """A CleverReach account. Plain methods; results are the API's JSON, errors the two kinds."""

    def __init__(self, http: HttpClient, batch_size: int = DEFAULT_BATCH):
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH}")
        self.http, self.batch_size = http, batch_size

    @classmethod
    def connect(
        cls,
        base_url: str,
        client_id: str,
        client_secret: str,
        batch_size: int = DEFAULT_BATCH,
        **http_options: Any,
    ) -> CleverReach:
        """Build the client with token auth against `base_url`'s token endpoint."""
        root = base_url.rstrip("/")

        def fetch(plain: HttpClient) -> tuple[str, float]:
            body = plain.request(
                "oauth.token",
                "POST",
                path("oauth", "token.php"),
                auth=(client_id, client_secret),
                json={"grant_type": "client_credentials"},
            ).json()
            return body["access_token"], float(body.get("expires_in", 3600))

        http = token_client(PROCESSOR, root, fetch, api_root=root + "/v3", **http_options)
        return cls(http, batch_size)

    # groups -------------------------------------------------------------------------
    def groups(self) -> list[dict]:
        """Every group of the account."""
        return self.http.request("groups.list", "GET", path("groups.json")).json()

    # receivers ----------------------------------------------------------------------
    def upsert(self, group_id: str, list_name: str, receivers: Sequence[dict]) -> list[dict]:
        """Create or update receivers in batches; returns CleverReach's receiver objects.

        Idempotent (keyed by e-mail at CleverReach), so a batch may be sent again after a
        crash or a dropped connection. A 413 halves the batch for the rest of this call.
        """
        check_allowed_many(list_name, receivers)
        result: list[dict] = []
        size, start = self.batch_size, 0
        while start < len(receivers):
            batch = list(receivers[start : start + size])
            # orjson: the upsert is the bulk of the traffic, and the stdlib's encoder and
            # decoder cost more client time per call than the rest of the call together.
            response = self.http.request(
                "receivers.upsert",
                "POST",
                path("groups.json", group_id, "receivers", "upsertplus"),
                data=orjson.dumps(batch),
                headers=_JSON,
                expect=(413,),
                items=len(batch),
            )
            if response.status_code == 413:
                if len(batch) == 1:
                    raise FatalError(PROCESSOR, "receivers.upsert", 413)
                size = len(batch) // 2
                continue
            result.extend(orjson.loads(response.content))
            start += len(batch)
        return result

    def get_receiver(self, group_id: str, email_or_id: str) -> dict | None:
        """The receiver, or None when CleverReach does not hold it (404 or empty list)."""
        response = self.http.request(
            "receivers.get",
            "GET",
            path("groups.json", group_id, "receivers", email_or_id),
            expect=(404,),
        )
        if response.status_code == 404:
            return None
        body = response.json()
        if isinstance(body, list):
            return body[0] if body else None
        return body or None

    def iter_receivers(
        self, group_id: str, kind: str = "all", page_size: int = PAGE_SIZE, max_pages: int = 10_000
    ) -> Iterator[dict]:
        """Every receiver of a group, page by page (0-based) until a short page."""
        for page in range(max_pages):
            rows = self.http.request(
                "receivers.list",
                "GET",
                path("groups.json", group_id, "receivers"),
                params={"page": page, "pagesize": page_size, "type": kind},
            ).json()
            yield from rows
            if len(rows) < page_size:
                return
        raise FatalError(PROCESSOR, "receivers.list", None, reason="page limit reached")

    def deactivate(self, group_id: str, email_or_id: str) -> bool:
        """Stop mailing at once. False when the receiver is not there (nothing to stop)."""
        response = self.http.request(
            "receivers.deactivate",
            "PUT",
            path("groups.json", group_id, "receivers", email_or_id, "deactivate"),
            expect=(404,),
        )
        return response.status_code != 404

    def delete(self, group_id: str, email_or_id: str) -> bool:
        """Remove the receiver from the group. False when it was already gone."""
        response = self.http.request(
            "receivers.delete",
            "DELETE",
            path("groups.json", group_id, "receivers", email_or_id),
            expect=(404,),
        )
        return response.status_code != 404

    def bulk_delete(self, emails: Sequence[str]) -> int:
        """Remove these addresses from every group of the account, in batches; returns count."""
        for start in range(0, len(emails), self.batch_size):
            batch = list(emails[start : start + self.batch_size])
            self.http.request(
                "receivers.bulk_delete",
                "POST",
                path("receivers", "delete.json"),
                json={"receivers": batch},
                items=len(batch),
            )
        return len(emails)


def from_settings(settings, session: requests.Session | None = None, **http_options) -> CleverReach:
    """The configured account (credentials from the environment or a Secret block)."""
    own, secret, options = setup(settings, PROCESSOR, session=session, **http_options)
    return CleverReach.connect(own.base_url, own.client_id, secret, batch_size=own.batch_size, **options)


class CleverReachEraser:
    """Newsletter and service-offers receivers (purpose ``consent:{list}``).

    Deleted from the list's group by CleverReach's receiver id (by the e-mail address only
    when no id was recorded); verified by reading it back as absent.
    """

    processor = PROCESSOR
    asynchronous = False

    def _group(self, target: Target) -> str:
        list_name = target.purpose_arg("consent:")
        group = target.settings.cleverreach.group(list_name)
        if not group:
            raise ValueError(f"no CleverReach group configured for list {list_name}")
        return str(group)

    def _receiver(self, target: Target) -> str:
        # The receiver id when we have it: an address in a URL travels into access logs.
        found = target.external_id or target.email
        if not found:
            raise ValueError("neither a receiver id nor an e-mail address to address it by")
        return found

    def erase(self, client: CleverReach, target: Target) -> str:
        client.delete(self._group(target), self._receiver(target))
        if not self.verify(client, target):
            raise NotVerified("receiver still in the group after the delete")
        return VERIFIED

    def verify(self, client: CleverReach, target: Target) -> bool:
        return client.get_receiver(self._group(target), self._receiver(target)) is None


ERASER = CleverReachEraser()


class CleverReachReader:
    """What CleverReach holds for a consent list (purpose ``consent:{list}``): the receiver
    in the list's group, with its attributes and global attributes, as CleverReach answers."""

    processor = PROCESSOR

    def read(self, client: CleverReach, target: Target) -> dict[str, Any] | None:
        group = ERASER._group(target)
        receiver = client.get_receiver(group, ERASER._receiver(target))
        if receiver is None:
            return None
        return {"group": {"id": group, "list": target.purpose_arg("consent:")}, "receiver": receiver}


READER = CleverReachReader()


# Rectification and restriction (Art. 16, 18, 19; connectors/amend.py) ---------------------
class CleverReachAmender:
    """A newsletter or service-offers receiver (purpose ``consent:{list}``).

    Corrected in place, by CleverReach's receiver id: ``PUT groups.json/{gid}/receivers/{id}``
    with the new ``email`` and ``global_attributes``. The receiver keeps its id, its group,
    its ``registered``/``activated`` times and its proof attributes (``signup_ip``,
    ``confirm_ip``, ``policy_version``): a change of address keeps the consent and its proof
    (deleting and adding it again would lose both). Restriction: ``PUT …/deactivate``;
    lifted with ``PUT …/activate``. Should the activation stamp the receiver's ``activated``
    anew (CleverReach does not document it), the confirmation time is written back with an
    upsert, so the proof stays the double opt-in's.
    """

    processor = PROCESSOR
    can_deactivate = True
    names: Mapping[str, str] = {
        "email": "email",
        "salutation": "global_attributes.salutation",
        "first_name": "global_attributes.firstname",
        "last_name": "global_attributes.lastname",
    }

    def _list(self, holder: Any) -> str:
        return holder.purpose_arg("consent:")

    def _group(self, holder: Any) -> str:
        group = holder.settings.cleverreach.group(self._list(holder))
        if not group:
            raise ValueError(f"no CleverReach group configured for list {self._list(holder)}")
        return str(group)

    def _find(self, client: CleverReach, holder: Any) -> dict | None:
        """The receiver by its id when the register has it, else by the address before and
        after the correction (a repeated run finds it under the new one)."""
        group = self._group(holder)
        for key in (holder.external_id, *holder.addresses):
            if key:
                found = client.get_receiver(group, key)
                if found is not None:
                    return found
        return None

    def locate(self, client: CleverReach, holder: Any) -> str | None:
        """CleverReach's id of the receiver (found as ``_find`` does), or None when it is not
        there. The rectification keeps it in the register: the push keeps none (it addresses
        receivers by address), and while a change of address is half done ours and
        CleverReach's differ, so a removal or erasure must address the receiver by its id."""
        found = self._find(client, holder)
        return str(found["id"]) if found is not None and found.get("id") is not None else None

    def read(self, client: CleverReach, holder: Any) -> dict[str, str] | None:
        receiver = self._find(client, holder)
        if receiver is None:
            return None
        held = {"email": str(receiver.get("email") or "")}
        names = receiver.get("global_attributes") or {}
        for ours, theirs in self.names.items():
            _, dot, inner = theirs.partition(".")
            if dot and names.get(inner):
                held[ours] = str(names[inner])
        return {key: value for key, value in held.items() if value}

    def update(self, client: CleverReach, holder: Any, changes: Mapping[str, str]) -> None:
        unknown = sorted(set(changes) - set(self.names))
        if unknown:  # refused before any call, like the allow-lists
            raise ValueError(f"field {unknown[0]} cannot be corrected at CleverReach")
        receiver = self._find(client, holder)
        if receiver is None:
            raise ValueError("the receiver is not there to correct")
        body: dict[str, Any] = {}
        for ours, value in changes.items():
            top, dot, inner = self.names[ours].partition(".")
            if dot:
                body.setdefault(top, {})[inner] = value
            else:
                body[top] = value
        check_allowed(self._list(holder), body)
        client.http.request(
            "receivers.update",
            "PUT",
            path("groups.json", self._group(holder), "receivers", str(receiver["id"])),
            json=body,
            items=1,
        )

    def deactivate(self, client: CleverReach, holder: Any) -> bool:
        receiver = self._find(client, holder)
        if receiver is None:
            return True  # nothing there to process
        client.deactivate(self._group(holder), str(receiver["id"]))
        after = self._find(client, holder)
        return after is None or not after.get("active")

    def reactivate(self, client: CleverReach, holder: Any) -> bool:
        before = self._find(client, holder)
        if before is None:
            return False
        group, rid = self._group(holder), str(before["id"])
        client.http.request("receivers.activate", "PUT", path("groups.json", group, "receivers", rid, "activate"))
        after = self._find(client, holder)
        if after is None:
            return False
        confirmed = int(before.get("activated") or 0)
        if confirmed and int(after.get("activated") or 0) != confirmed:
            client.upsert(group, self._list(holder), [{"email": after["email"], "activated": confirmed}])
            after = self._find(client, holder) or after
        return bool(after.get("active"))


AMENDER = CleverReachAmender()
