"""In-memory CleverReach account: groups, receivers, global attributes, tokens.

Pure data and rules, no HTTP: the router in :mod:`sandbox.cleverreach` turns
requests into calls on :class:`CleverReachState` and :class:`ApiError` into
responses. Object shapes mirror answers recorded from the real API v3.

Performance notes (a benchmark pushes 100k receivers through this): each
group keeps an insertion-ordered ``email -> receiver`` dict, so upserts are
O(batch); paging slices a key list that is cached per filter type and only
rebuilt after the group changed.
"""

from __future__ import annotations

import time
from typing import TypeGuard, cast

from sandbox.common import TokenStore
from sandbox.errors import ApiError

INITIAL_GROUPS: tuple[tuple[str, str], ...] = (
    ("1001", "Newsletter"),
    ("1002", "Mehrwert- und Serviceangebote"),
)
UPSERT_BATCH_LIMIT = 1000
DELETE_BATCH_LIMIT = 1000
PAGESIZE_DEFAULT = 500
PAGESIZE_MAX = 5000
ATTRIBUTE_TYPES = frozenset({"text", "number", "gender", "date"})
RECEIVER_TYPES = ("all", "active", "inactive")
TIMESTAMP_FIELDS = ("registered", "activated", "deactivated")
DICT_FIELDS = ("global_attributes", "attributes")

_MISSING = object()


def now() -> int:
    """Current Unix time in whole seconds (module-level so tests can patch it)."""
    return int(time.time())


def is_plausible_email(value: object) -> TypeGuard[str]:
    """Exactly one ``@`` with non-empty local and domain parts."""
    if not isinstance(value, str):
        return False
    local, sep, domain = value.partition("@")
    return bool(sep and local and domain and "@" not in domain)


class Group:
    """One receiver group: its public object plus its receivers."""

    __slots__ = ("_key_cache", "_version", "data", "ids", "receivers")

    def __init__(self, gid: str, name: str, stamp: int) -> None:
        self.data = {
            "id": gid,
            "name": name,
            "locked": False,
            "backup": True,
            "receiver_info": "",
            "stamp": stamp,
            "last_mailing": 0,
            "last_changed": stamp,
        }
        # lower-cased email -> receiver object; insertion order is id order
        # because ids come from a monotonically increasing counter.
        self.receivers: dict[str, dict] = {}
        self.ids: dict[str, str] = {}  # receiver id -> lower-cased email
        self._version = 0
        self._key_cache: dict[str, tuple[int, list[str]]] = {}

    @property
    def gid(self) -> str:
        """The group's id (a string, as in the real API)."""
        return cast(str, self.data["id"])

    def touched(self) -> None:
        """Record a change: bumps last_changed and invalidates paging caches."""
        self._version += 1
        self.data["last_changed"] = now()

    def lookup(self, email_or_id: str) -> dict | None:
        """Find a receiver by e-mail (case-insensitive) or by receiver id."""
        if "@" in email_or_id:
            return self.receivers.get(email_or_id.lower())
        email = self.ids.get(email_or_id)
        return self.receivers.get(email) if email is not None else None

    def remove(self, email: str) -> bool:
        """Remove a receiver by lower-cased e-mail; False if absent."""
        receiver = self.receivers.pop(email, None)
        if receiver is None:
            return False
        self.ids.pop(receiver["id"], None)
        self.touched()
        return True

    def page(self, kind: str, page: int, pagesize: int) -> list[dict]:
        """Return one 0-based page of receivers filtered by ``kind``."""
        keys = self._keys(kind)
        start = page * pagesize
        receivers = self.receivers
        return [receivers[email] for email in keys[start : start + pagesize]]

    def _keys(self, kind: str) -> list[str]:
        cached = self._key_cache.get(kind)
        if cached is not None and cached[0] == self._version:
            return cached[1]
        if kind == "all":
            keys = list(self.receivers)
        else:
            want = kind == "active"
            keys = [email for email, r in self.receivers.items() if r["active"] is want]
        self._key_cache[kind] = (self._version, keys)
        return keys


def _new_receiver(rid: str, email: str, gid: str, stamp: int) -> dict:
    # Key order follows the recorded real answer.
    return {
        "id": rid,
        "email": email,
        "imported": 0,
        "bounced": 0,
        "group_id": gid,
        "activated": 0,
        "registered": stamp,
        "deactivated": 0,
        "last_ip": "",
        "last_location": "",
        "last_client": "",
        "points": 0,
        "stars": 0,
        "source": "",
        "attributes": {},
        "global_attributes": {},
        "active": False,
        "conversion_rate": 0,
        "open_rate": 0,
        "click_rate": 0,
        "tags": [],
        "events": [],
        "orders": [],
    }


def _event(stamp: int, type_id: str, gid: str) -> dict:
    return {"stamp": stamp, "type": "api", "type_id": type_id, "value": "", "mailing_id": "0", "groups_id": gid}


def _clean_item(item: object, index: int) -> dict:
    """Validate one upsert item; return only the fields it provides.

    Raises ApiError(400) naming the index, never the address.
    """
    if not isinstance(item, dict):
        raise ApiError(400, f"Bad Request: item {index} is not an object")
    email = item.get("email")
    if not is_plausible_email(email):
        raise ApiError(400, f"Bad Request: invalid email in item {index}")
    clean: dict = {"email": email.lower()}
    if "source" in item and item["source"] is not None:
        if not isinstance(item["source"], str):
            raise ApiError(400, f"Bad Request: source must be a string in item {index}")
        clean["source"] = item["source"]
    for field in TIMESTAMP_FIELDS:
        if field in item and item[field] is not None:
            clean[field] = _timestamp(item[field], field, index)
    for field in DICT_FIELDS:
        if field in item and item[field] is not None:
            value = item[field]
            if not isinstance(value, dict):
                raise ApiError(400, f"Bad Request: {field} must be an object in item {index}")
            clean[field] = value
    if "tags" in item and item["tags"] is not None:
        tags = item["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ApiError(400, f"Bad Request: tags must be a list of strings in item {index}")
        clean["tags"] = tags
    return clean


def _timestamp(value: object, field: str, index: int) -> int:
    # The real API accepts numeric strings too; bools are almost certainly a
    # client bug, so reject them instead of treating True as 1970-01-01T00:00:01.
    if isinstance(value, bool):
        raise ApiError(400, f"Bad Request: {field} must be a Unix timestamp in item {index}")
    try:
        stamp = int(value)  # type: ignore[call-overload]  # any JSON value; what int() refuses is answered below
    except (TypeError, ValueError):
        raise ApiError(400, f"Bad Request: {field} must be a Unix timestamp in item {index}") from None
    if stamp < 0:
        raise ApiError(400, f"Bad Request: {field} must not be negative in item {index}")
    return stamp


def _apply(receiver: dict, clean: dict) -> bool:
    """Merge validated fields into a receiver; return whether anything changed."""
    changed = False
    for field in ("source", *TIMESTAMP_FIELDS):
        if field in clean and receiver[field] != clean[field]:
            receiver[field] = clean[field]
            changed = True
    for field in DICT_FIELDS:
        if field in clean:
            target = receiver[field]
            for key, value in clean[field].items():
                if target.get(key, _MISSING) != value:
                    target[key] = value
                    changed = True
    if "tags" in clean:
        tags = receiver["tags"]
        present = set(tags)
        for tag in clean["tags"]:
            if tag not in present:
                tags.append(tag)
                present.add(tag)
                changed = True
    active = receiver["activated"] > 0 and receiver["deactivated"] == 0
    if receiver["active"] is not active:
        receiver["active"] = active
        changed = True
    return changed


class CleverReachState:
    """The whole imitated account. All mutations go through these methods."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Back to the initial two groups; counters zero; all tokens revoked."""
        stamp = now()
        self.groups: dict[str, Group] = {gid: Group(gid, name, stamp) for gid, name in INITIAL_GROUPS}
        self.attributes: dict[str, dict] = {}  # lower-cased name -> attribute
        self.tokens = TokenStore()
        self.calls: dict[str, int] = {}
        self._next_group_id = 1003
        self._next_receiver_id = 1
        self._next_attribute_id = 1

    # -- groups -----------------------------------------------------------
    def list_groups(self) -> list[dict]:
        """All group objects, in creation order."""
        return [group.data for group in self.groups.values()]

    def create_group(self, name: object) -> dict:
        """Create a group with a fresh string id."""
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "Bad Request: name is required")
        gid = str(self._next_group_id)
        self._next_group_id += 1
        group = Group(gid, name, now())
        self.groups[gid] = group
        return group.data

    def group(self, gid: str) -> Group:
        """Return a group or raise 404."""
        group = self.groups.get(gid)
        if group is None:
            raise ApiError(404, "Not Found: invalid group")
        return group

    # -- receivers --------------------------------------------------------
    def upsert(self, gid: str, items: object) -> list[dict]:
        """Upsert a batch into a group; all-or-nothing validation first.

        Keyed by lower-cased e-mail: absent receivers are created, present
        ones merged (scalars overwrite, attribute dicts merge, tags union).
        An unchanged receiver is left exactly as it was, so repeating a batch
        is a no-op.
        """
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list):
            raise ApiError(400, "Bad Request: expected a list of receivers")
        if len(items) > UPSERT_BATCH_LIMIT:
            raise ApiError(413, "Request Entity Too Large")
        group = self.group(gid)
        cleaned = [_clean_item(item, index) for index, item in enumerate(items)]
        stamp = now()
        result = []
        changed_any = False
        for clean in cleaned:
            email = clean["email"]
            receiver = group.receivers.get(email)
            if receiver is None:
                rid = str(self._next_receiver_id)
                self._next_receiver_id += 1
                receiver = _new_receiver(rid, email, gid, stamp)
                _apply(receiver, clean)
                receiver["events"].append(_event(stamp, "REST insert", gid))
                group.receivers[email] = receiver
                group.ids[rid] = email
                changed_any = True
            elif _apply(receiver, clean):
                receiver["events"].append(_event(stamp, "REST update", gid))
                changed_any = True
            result.append(receiver)
        if changed_any:
            group.touched()
        return result

    def receiver(self, gid: str, email_or_id: str) -> dict:
        """Return a receiver of a group or raise 404."""
        receiver = self.group(gid).lookup(email_or_id)
        if receiver is None:
            raise ApiError(404, "Not Found: invalid receiver")
        return receiver

    def receiver_anywhere(self, email_or_id: str) -> dict:
        """Return the first matching receiver in any group or raise 404."""
        for group in self.groups.values():
            receiver = group.lookup(email_or_id)
            if receiver is not None:
                return receiver
        raise ApiError(404, "Not Found: invalid receiver")

    def receivers_page(self, gid: str, kind: str, page: int, pagesize: int) -> list[dict]:
        """One 0-based page of a group's receivers in id order."""
        if kind not in RECEIVER_TYPES:
            raise ApiError(400, "Bad Request: type must be active, inactive or all")
        if page < 0 or pagesize < 1:
            raise ApiError(400, "Bad Request: invalid page or pagesize")
        return self.group(gid).page(kind, page, min(pagesize, PAGESIZE_MAX))

    def set_active(self, gid: str, email_or_id: str, active: bool) -> None:
        """Activate (activated=now, deactivated=0) or deactivate a receiver."""
        group = self.group(gid)
        receiver = group.lookup(email_or_id)
        if receiver is None:
            raise ApiError(404, "Not Found: invalid receiver")
        if active:
            receiver["activated"] = now()
            receiver["deactivated"] = 0
            receiver["active"] = True
        else:
            if receiver["deactivated"] == 0:
                receiver["deactivated"] = now()
            receiver["active"] = False
        group.touched()

    def update_receiver(self, gid: str, email_or_id: str, body: object) -> dict:
        """Update one receiver in place: a new ``email`` keeps its id, times, attributes and
        events (409 when another receiver of the group has that address); other fields merge
        as an upsert merges them. 404 when absent."""
        group = self.group(gid)
        receiver = group.lookup(email_or_id)
        if receiver is None:
            raise ApiError(404, "Not Found: invalid receiver")
        if not isinstance(body, dict):
            raise ApiError(400, "Bad Request: expected an object")
        clean = _clean_item({"email": receiver["email"], **body}, 0)
        old, new = receiver["email"], clean["email"]
        changed = False
        if new != old:
            if new in group.receivers:
                raise ApiError(409, "Conflict: email already exists in this group")
            # Re-keyed where it stands: the group's order is the receivers' id order.
            group.receivers = {(new if key == old else key): value for key, value in group.receivers.items()}
            group.ids[receiver["id"]] = new
            receiver["email"] = new
            changed = True
        if _apply(receiver, clean) or changed:
            receiver["events"].append(_event(now(), "REST update", gid))
            group.touched()
        return receiver

    def delete(self, gid: str, email_or_id: str) -> None:
        """Remove a receiver from one group or raise 404."""
        group = self.group(gid)
        receiver = group.lookup(email_or_id)
        if receiver is None:
            raise ApiError(404, "Not Found: invalid receiver")
        group.remove(receiver["email"])

    def delete_everywhere(self, email_or_id: str) -> None:
        """Remove an address from every group or raise 404 if it is nowhere."""
        receiver = self.receiver_anywhere(email_or_id)
        self._remove_email(receiver["email"])

    def delete_many(self, emails: object) -> None:
        """Remove each address from every group; unknown ones are ignored."""
        if not isinstance(emails, list) or not all(isinstance(e, str) for e in emails):
            raise ApiError(400, "Bad Request: receivers must be a list of e-mail addresses")
        if len(emails) > DELETE_BATCH_LIMIT:
            raise ApiError(413, "Request Entity Too Large")
        for email in emails:
            self._remove_email(email.lower())

    def unsubscribe(self, email: object) -> int:
        """Simulate an unsubscribe click: deactivate the address everywhere.

        Returns the number of groups affected; raises 404 if none.
        """
        if not isinstance(email, str):
            raise ApiError(400, "Bad Request: email is required")
        key = email.lower()
        stamp = now()
        affected = 0
        for group in self.groups.values():
            receiver = group.receivers.get(key)
            if receiver is None:
                continue
            if receiver["deactivated"] == 0:
                receiver["deactivated"] = stamp
            receiver["active"] = False
            group.touched()
            affected += 1
        if not affected:
            raise ApiError(404, "Not Found: invalid receiver")
        return affected

    def _remove_email(self, email: str) -> bool:
        removed = False
        for group in self.groups.values():
            removed = group.remove(email) or removed
        return removed

    # -- global attributes ------------------------------------------------
    def list_attributes(self) -> list[dict]:
        """All global attributes in creation order."""
        return list(self.attributes.values())

    def create_attribute(self, payload: object) -> dict:
        """Create a global attribute; 409 if the name exists."""
        if not isinstance(payload, dict):
            raise ApiError(400, "Bad Request: expected an object")
        name = payload.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, "Bad Request: name is required")
        kind = payload.get("type", "text")
        if kind not in ATTRIBUTE_TYPES:
            raise ApiError(400, "Bad Request: type must be text, number, gender or date")
        description = payload.get("description") or ""
        if not isinstance(description, str):
            raise ApiError(400, "Bad Request: description must be a string")
        key = name.lower()
        if key in self.attributes:
            raise ApiError(409, "Conflict: attribute already exists")
        attribute = {
            "id": self._next_attribute_id,
            "groups_id": 0,
            "name": name,
            "description": description,
            "preview_value": "",
            "value": None,
            "type": kind,
            "tag": "{" + name.upper() + "}",
        }
        self._next_attribute_id += 1
        self.attributes[key] = attribute
        return attribute

    # -- control ----------------------------------------------------------
    def snapshot(self) -> dict:
        """State for ``GET /_sandbox/state``; shares live objects (no copies).

        The caller must serialise it before yielding to the event loop.
        """
        return {
            "groups": {
                gid: {"name": group.data["name"], "receivers": group.receivers} for gid, group in self.groups.items()
            },
            "attributes": self.list_attributes(),
            "calls": self.calls,
        }
