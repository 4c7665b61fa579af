"""Error type and body shared by all sandbox routes.

CleverReach answers errors as ``{"error": {"code": <int>, "message": "..."}}``;
the sandbox uses that shape wherever a processor has no shape of its own
(TIMIFY has one in :mod:`sandbox.timify_state`; Flexperto and Nect share the
string-code shape below).
"""

from __future__ import annotations

from starlette.responses import JSONResponse


class ApiError(Exception):
    """An HTTP error a handler raises; rendered as the CleverReach error body.

    Messages must never contain personal data (e-mail addresses): they end up
    in client logs.
    """

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers

    def response(self) -> JSONResponse:
        """Render this error as a JSON response."""
        return error_response(self.code, self.message, self.headers)


def error_body(code: int, message: str) -> dict:
    """Return the CleverReach-style error body."""
    return {"error": {"code": code, "message": message}}


def error_response(code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Return a JSON response carrying the CleverReach-style error body."""
    return JSONResponse(error_body(code, message), status_code=code, headers=headers)


# Flexperto and Nect (both assumed contracts) answer errors with a string code
# derived from the HTTP status: ``{"error": {"code": "conflict", "message": "..."}}``.
STRING_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    429: "rate_limited",
}


class StringCodeError(ApiError):
    """An error answered with a string code (see :func:`string_code_error_response`)."""

    def response(self) -> JSONResponse:
        return string_code_error_response(self.code, self.message, self.headers)


def string_code_error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"error": {"code": <string code>, "message"}}``: the code derives from the HTTP status."""
    code = STRING_CODES.get(status, "server_error" if status >= 500 else "error")
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)
