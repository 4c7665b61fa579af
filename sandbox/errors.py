"""Error type and body shared by all sandbox routes.

CleverReach answers errors as ``{"error": {"code": <int>, "message": "..."}}``;
the sandbox uses that shape everywhere (including injected faults) so clients
only ever have to parse one error format.
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
