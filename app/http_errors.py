"""Every error rxt-serve answers, in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Bad requests are 4xx with a sentence naming the field and what was expected; anything unexpected
is a 500 whose body says only that (the traceback goes to the server's log, never to the client).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("rxt_app.serve")

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
NOT_FOUND = "not_found_error"
CONFLICT = "conflict_error"
SERVER_ERROR = "server_error"

_TYPE_BY_STATUS = {401: AUTHENTICATION, 404: NOT_FOUND, 409: CONFLICT}


class APIError(Exception):
    """An answer with an error status; raised anywhere below an endpoint.

    Args:
        status: the HTTP status (4xx for the client's mistakes).
        message: what is wrong, in a sentence naming the field or value.
        param: the request field at fault (``messages[2].content``), if any.
        code: a short machine-readable reason (``model_not_found``).
    """

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    @property
    def type(self) -> str:
        if self.status >= 500:
            return SERVER_ERROR
        return _TYPE_BY_STATUS.get(self.status, INVALID_REQUEST)

    def body(self) -> dict:
        """The JSON body: OpenAI's error object."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(error: APIError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def not_found(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(404, message, param=param, code=code)


_UNION_MEMBERS = {"str", "int", "float", "bool", "list", "dict", "none"}


def field_path(location: tuple | list) -> str:
    """``("body", "messages", 2, "content")`` as ``messages[2].content`` (pydantic's union member
    tags such as ``str`` or ``list[ContentPart]`` left out)."""
    path = ""
    for part in location:
        if part in ("body", "query", "path") and not path:
            continue
        if isinstance(part, str) and (part in _UNION_MEMBERS or "[" in part):
            continue
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if request.method in ("POST", "PATCH", "PUT") and not (
        media_type == "application/json" or media_type.endswith("+json")
    ):
        message = f"send the body as JSON with 'Content-Type: application/json' (not {content_type or 'none'!r})"
        return error_response(APIError(415, message, code="unsupported_media_type"))
    problems = sorted(error.errors(), key=lambda problem: len(problem.get("loc", ())), reverse=True)
    first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
    param = field_path(first.get("loc", ()))
    message = first.get("msg", "invalid request")
    if first.get("type") == "json_invalid":
        param = ""
        message = f"the body is not valid JSON ({first.get('ctx', {}).get('error', message)})"
    elif param:
        message = f"{param}: {message}"
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    return error_response(bad_request(message, param or None))


def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    messages = {404: f"no such endpoint: {request.method} {request.url.path}", 405: "method not allowed"}
    message = messages.get(error.status_code, str(error.detail))
    return error_response(APIError(error.status_code, message), headers=getattr(error, "headers", None))


def _api_error(request: Request, error: APIError) -> JSONResponse:
    return error_response(error)


def _unexpected(request: Request, error: Exception) -> JSONResponse:
    log.error("%s %s failed", request.method, request.url.path, exc_info=error)
    return error_response(APIError(500, "internal error of the server (its log has the details)"))


def install_error_handlers(app: FastAPI) -> None:
    """Answer validation errors, unknown routes, APIError and unexpected exceptions in OpenAI's shape."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(Exception, _unexpected)
