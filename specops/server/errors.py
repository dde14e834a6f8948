"""Service exceptions and their HTTP form.

Every error leaves the server as the OpenAI error shape, so the `openai` client raises a
typed exception with our message: {"error": {"message", "type", "param", "code", ...}}.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("specops.server")


class ServiceError(Exception):
    """An error with an HTTP status; `extra` fields are added to the error object."""

    status = 500
    type = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None, status: int | None = None, **extra):
        super().__init__(message)
        self.message, self.param, self.code, self.retry_after = message, param, code, retry_after
        self.status = status or self.status
        self.extra = extra

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class InvalidRequest(ServiceError):
    """Input the engine cannot use: 422 for values outside their limits, 400 otherwise."""
    status, type = 422, "invalid_request_error"


class TooLarge(ServiceError):
    """413: the body, or the prompt once tokenized, exceeds a size limit; the message says which."""
    status, type = 413, "invalid_request_error"


class Unauthorized(ServiceError):
    status, type = 401, "authentication_error"


class ModelNotFound(ServiceError):
    status, type = 404, "invalid_request_error"


class QueueFull(ServiceError):
    """The bounded queue is full: come back later (429 + Retry-After), never an unbounded backlog."""
    status, type = 429, "rate_limit_error"


class Unavailable(ServiceError):
    """503 + Retry-After: models not ready, draining, or a request waited past its queue timeout."""
    status, type = 503, "service_unavailable"


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None, **extra) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code, **extra}}


async def _service_error(_: Request, err: ServiceError) -> JSONResponse:
    body = error_body(err.message, err.type, err.param, err.code, **err.extra)
    return JSONResponse(body, status_code=err.status, headers=err.headers())


def describe_validation(errors) -> tuple[str, str | None, bool]:
    """pydantic errors -> (message naming each field and its limit, first field, malformed JSON?)."""
    by_field: dict[str, list[str]] = {}
    got: dict[str, str] = {}
    for e in errors:
        if e.get("type") == "json_invalid":
            return f"malformed JSON body: {e.get('ctx', {}).get('error', e.get('msg'))}", None, True
        keep_all = e.get("type") == "extra_forbidden"  # an unknown field's name is the client's, kept as is
        loc = ".".join(str(p) for p in e.get("loc", ())
                       if p != "body" and (keep_all or not _is_union_member(p))) or "body"
        msg = "unknown field, not supported here" if keep_all else e.get("msg", "invalid")
        by_field.setdefault(loc, []).append(msg)
        if e.get("type") != "missing":
            got[loc] = f" (got {e.get('input')!r:.60})"
    parts = [f"{loc}: {' or '.join(dict.fromkeys(msgs))}{got.get(loc, '')}" for loc, msgs in by_field.items()]
    return "; ".join(parts), next(iter(by_field), None), False


def _is_union_member(part) -> bool:
    # pydantic names the member of a union that failed ("str", "list[str]", "constrained-str",
    # "function-after[...]"): not a field name
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part or "-" in part)


# fields we do not honour, and fields the endpoint does not have: a 400, never silently ignored
UNSUPPORTED_TYPES = ("unsupported", "extra_forbidden")


async def _validation_error(_: Request, err: RequestValidationError) -> JSONResponse:
    errors = err.errors()
    message, param, malformed = describe_validation(errors)
    status, code = (400, "invalid_json") if malformed else (422, "invalid_value")
    if errors and all(e.get("type") in UNSUPPORTED_TYPES for e in errors):
        status, code = 400, "unsupported_field"
    return JSONResponse(error_body(message, "invalid_request_error", param, code), status_code=status)


async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
    type_ = "not_found_error" if err.status_code == 404 else "invalid_request_error"
    return JSONResponse(error_body(str(err.detail), type_), status_code=err.status_code,
                        headers=getattr(err, "headers", None))


async def _unexpected(_: Request, err: Exception) -> JSONResponse:
    log.exception("unhandled error: %s", err)
    return JSONResponse(error_body(f"internal error: {type(err).__name__}", "server_error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    # the handlers are async: Starlette runs a plain `def` handler in its thread pool, so a burst of
    # 429s grew the process by up to 40 threads (seen by `specops bench soak`)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
