"""OpenAI-style error bodies and the API-key check.

Every error answer is ``{"error": {"message", "type", "param", "code"}}`` with
the status OpenAI uses: 400 for a bad request (invalid JSON, a prompt that
does not fit the context, an unsupported field), 422 for a body that does not
match the schema (unknown or mistyped fields), 401 for a missing or wrong API
key, 404 for an unknown model, 429 (with ``Retry-After``) when the queue is
full, 500 when the server failed on the request, 504 past the timeout.
"""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class APIError(Exception):
    """An error answer: HTTP `status` and the OpenAI error fields."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def body(self) -> dict:
        """The JSON body."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    """``{"error": {...}}`` as OpenAI writes it."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _validation_answer(exc: RequestValidationError) -> JSONResponse:
    errs = exc.errors()
    first = errs[0] if errs else {"msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":
        return JSONResponse(error_body(f"the body is not valid JSON: {first.get('msg')}",
                                       "invalid_request_error", None, "invalid_json"), 400)
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "extra_forbidden":
        msg = f"unrecognized request argument supplied: {param}"
    else:
        msg = f"{param or 'body'}: {first.get('msg')}"
    return JSONResponse(error_body(msg, "invalid_request_error", param, first.get("type")), 422)


def install_handlers(app: FastAPI, api_key: str | None) -> None:
    """Error handlers that answer OpenAI bodies, and the Bearer check if `api_key`."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        return _validation_answer(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception):
        return JSONResponse(error_body(f"the server failed on this request: "
                                       f"{type(exc).__name__}: {exc}", "server_error"), 500)

    if not api_key:
        return
    expected = f"Bearer {api_key}".encode()

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if request.url.path != "/health":
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                body = error_body("a valid API key is required: send 'Authorization: Bearer "
                                  "<key>' with the server's --api_key", "invalid_request_error",
                                  None, "invalid_api_key")
                return JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)
