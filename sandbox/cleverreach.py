"""CleverReach REST API v3 imitation: routes under ``/cleverreach``.

A client's base URL is ``http://HOST:PORT/cleverreach`` (the real root is
https://rest.cleverreach.com). Every ``/v3`` route needs a bearer token from
``POST /oauth/token.php``. The real API accepts collection names with and
without ``.json`` (``groups.json/1001`` == ``groups/1001``), so each route is
registered under all spellings but counted under one canonical template.
"""

from __future__ import annotations

from functools import partial

from fastapi import Request
from starlette.responses import JSONResponse, Response

from sandbox.cleverreach_state import PAGESIZE_DEFAULT, CleverReachState
from sandbox.common import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    Handler,
    Processor,
    basic_credentials,
    form_or_json,
    json_body,
    oauth_error,
    query_int,
)
from sandbox.errors import ApiError

UNAUTHORIZED_MESSAGE = "Unauthorized: token expired or invalid"


def bad_request(message: str) -> ApiError:
    """CleverReach's 400: the message is prefixed with ``Bad Request: ``."""
    return ApiError(400, f"Bad Request: {message}")


_json_body = partial(json_body, bad_request=bad_request)
_query_int = partial(query_int, bad_request=bad_request)


def _json_variants(template: str) -> list[str]:
    """All accepted spellings of a ``/v3/<collection>/...`` template.

    ``.json`` is optional on the collection segment, and on ``delete`` in the
    bulk-delete route (``receivers.json/delete.json`` is what the docs show).
    """
    parts = template.split("/")  # ["", "v3", collection, ...]
    options = [[part] for part in parts]
    options[2] = [parts[2], parts[2] + ".json"]
    if parts[-1] == "delete" and len(parts) == 4:
        options[-1] = ["delete", "delete.json"]
    variants = [""]
    for choice in options[1:]:
        variants = [prefix + "/" + part for prefix in variants for part in choice]
    return variants


class CleverReach(Processor):
    """The CleverReach processor: state, API router and control router."""

    name = "cleverreach"
    prefix = "/cleverreach"
    unauthorized_message = UNAUTHORIZED_MESSAGE

    def __init__(
        self,
        token_ttl_s: int = 3600,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
    ) -> None:
        self.token_ttl_s = token_ttl_s
        self.client_id = client_id
        self.client_secret = client_secret
        super().__init__(CleverReachState())

    def _add(self, method: str, template: str, handler: Handler, auth: bool = True) -> None:
        """A route under every accepted spelling (see :func:`_json_variants`), counted once."""
        paths = _json_variants(template) if template.startswith("/v3/") else [template]
        self._route(method, template, handler, auth=auth, paths=paths)

    def _register_api(self) -> None:
        s = self.state
        add = self._add

        async def token(request: Request) -> Response:
            """OAuth2 client-credentials grant (HTTP Basic or body credentials)."""
            return await self._issue_token(request)

        async def list_groups(request: Request) -> object:
            """All groups."""
            return s.list_groups()

        async def create_group(request: Request) -> object:
            """Create a group from ``{"name": ...}``."""
            body = await _json_body(request)
            return s.create_group(body.get("name") if isinstance(body, dict) else None)

        async def get_group(request: Request) -> object:
            """One group."""
            return s.group(request.path_params["gid"]).data

        async def upsertplus(request: Request) -> object:
            """Batch upsert (max 1000) of receivers into a group."""
            body = await _json_body(request)
            return s.upsert(request.path_params["gid"], body)

        async def list_receivers(request: Request) -> object:
            """0-based pages of a group's receivers, filterable by type."""
            return s.receivers_page(
                request.path_params["gid"],
                request.query_params.get("type") or "all",
                _query_int(request, "page", 0),
                _query_int(request, "pagesize", PAGESIZE_DEFAULT),
            )

        async def get_receiver(request: Request) -> object:
            """A group's receiver by e-mail or id."""
            return s.receiver(request.path_params["gid"], request.path_params["email_or_id"])

        async def deactivate(request: Request) -> object:
            """Deactivate a group's receiver."""
            s.set_active(request.path_params["gid"], request.path_params["email_or_id"], False)
            return True

        async def activate(request: Request) -> object:
            """Activate a group's receiver."""
            s.set_active(request.path_params["gid"], request.path_params["email_or_id"], True)
            return True

        async def update_receiver(request: Request) -> object:
            """Update one receiver of a group in place (``PUT``; a new ``email`` keeps its id)."""
            body = await _json_body(request)
            return s.update_receiver(request.path_params["gid"], request.path_params["email_or_id"], body)

        async def delete_receiver(request: Request) -> object:
            """Remove a receiver from one group."""
            s.delete(request.path_params["gid"], request.path_params["email_or_id"])
            return True

        async def get_receiver_anywhere(request: Request) -> object:
            """First receiver matching e-mail or id in any group."""
            return s.receiver_anywhere(request.path_params["email_or_id"])

        async def delete_receiver_everywhere(request: Request) -> object:
            """Remove an address from all groups."""
            s.delete_everywhere(request.path_params["email_or_id"])
            return True

        async def bulk_delete(request: Request) -> object:
            """Remove up to 1000 addresses from all groups; unknown ones ignored."""
            body = await _json_body(request)
            s.delete_many(body.get("receivers") if isinstance(body, dict) else None)
            return True

        async def list_attributes(request: Request) -> object:
            """Global attributes."""
            return s.list_attributes()

        async def create_attribute(request: Request) -> object:
            """Create a global attribute; 409 on duplicate name."""
            return s.create_attribute(await _json_body(request))

        add("POST", "/oauth/token.php", token, auth=False)
        add("GET", "/v3/groups", list_groups)
        add("POST", "/v3/groups", create_group)
        add("GET", "/v3/groups/{gid}", get_group)
        add("POST", "/v3/groups/{gid}/receivers/upsertplus", upsertplus)
        add("GET", "/v3/groups/{gid}/receivers", list_receivers)
        add("PUT", "/v3/groups/{gid}/receivers/{email_or_id:path}/deactivate", deactivate)
        add("PUT", "/v3/groups/{gid}/receivers/{email_or_id:path}/activate", activate)
        add("GET", "/v3/groups/{gid}/receivers/{email_or_id:path}", get_receiver)
        add("PUT", "/v3/groups/{gid}/receivers/{email_or_id:path}", update_receiver)
        add("DELETE", "/v3/groups/{gid}/receivers/{email_or_id:path}", delete_receiver)
        # Registered before the {email_or_id} routes so "delete" is never
        # taken for an address.
        add("POST", "/v3/receivers/delete", bulk_delete)
        add("GET", "/v3/receivers/{email_or_id:path}", get_receiver_anywhere)
        add("DELETE", "/v3/receivers/{email_or_id:path}", delete_receiver_everywhere)
        add("GET", "/v3/attributes", list_attributes)
        add("POST", "/v3/attributes", create_attribute)

    async def _issue_token(self, request: Request) -> Response:
        client_id, client_secret = basic_credentials(request.headers.get("authorization"))
        try:
            body = form_or_json(await request.body(), request.headers.get("content-type", ""))
        except ValueError:
            return oauth_error(400, "invalid_request", "body must be JSON or form-encoded")
        # Body credentials are accepted as a fallback, like most OAuth servers.
        if client_id is None:
            client_id, client_secret = body.get("client_id"), body.get("client_secret")
        if client_id != self.client_id or client_secret != self.client_secret:
            return oauth_error(401, "invalid_client", "Client authentication failed")
        if body.get("grant_type") != "client_credentials":
            return oauth_error(400, "unsupported_grant_type", "Only client_credentials is supported")
        token = self.state.tokens.issue(self.token_ttl_s)
        return JSONResponse(
            {
                "access_token": token,
                "expires_in": self.token_ttl_s,
                "token_type": "bearer",
                "scope": "oa basic receivers",
            }
        )

    def _register_control(self) -> None:
        s = self.state

        @self.control.post("/unsubscribe")
        async def unsubscribe(request: Request) -> Response:
            """Simulate the receiver clicking "unsubscribe" in a newsletter."""
            body = await _json_body(request)
            affected = s.unsubscribe(body.get("email") if isinstance(body, dict) else None)
            return JSONResponse({"groups": affected})

        self._add_expire_tokens()
