"""/openapi.json as the contract: every limit the server enforces and every status it returns.

Static limits come from the request types (schemas.py, openai_schemas.py). Limits that depend
on the settings or on the loaded model carry an `x-limit` mark there, and `install_contract`
writes their current value next to it on every read of /openapi.json: the same values
validation.py enforces (before the model is ready only the settings' are known). Limits that
depend on tokenization cannot be a schema; the request descriptions state them, and they are
refused with 413 (`context_length_exceeded`) or 422.
"""
from __future__ import annotations

import copy
from typing import Iterable

from fastapi import FastAPI

from .schemas import ErrorResponse
from .service import Service
from .validation import max_new_tokens_bound, speculators

# x-limit name -> the JSON-schema keyword its value goes in
LIMIT_KEYWORDS = {"max_new_tokens": "maximum", "prompt_tokens": "maxItems", "token_id": "maximum",
                  "speculators": "enum"}

RETRY_AFTER = {"Retry-After": {"description": "seconds after which a retry is likely to be admitted",
                               "schema": {"type": "integer", "minimum": 1}}}


def _error(description: str, **extra) -> dict:
    return {"model": ErrorResponse, "description": description, **extra}


AUTH_ERRORS = {401: _error("`api_key` is set and the request lacks `Authorization: Bearer <key>`")}

GENERATION_ERRORS = {
    400: _error("malformed JSON body (`invalid_json`); a field this endpoint does not have or does not honour "
                "(`unsupported_field`: never silently ignored); a regex, grammar, JSON schema or tool definition "
                "that does not compile (`invalid_grammar`, with the compiler's message); fields that cannot go "
                "together (`invalid_value`: two output constraints, tool_choice without tools, top_logprobs "
                "without logprobs, ignore_eos with a constraint); chat with a model that has no chat template "
                "(`no_chat_template`); input the engine refuses (`invalid_prompt`, a guard: validation lets "
                "none through)"),
    **AUTH_ERRORS,
    413: _error("the body is over `max_body_bytes` (`body_too_large`), or the prompt once tokenized, alone or "
                "with the token budget, is over the context cap (`context_length_exceeded`)"),
    422: _error("a field of the wrong type, missing, or outside its limit; the message names the field and "
                "the limit"),
    429: _error("the queue is full (`queue_full`)", headers=RETRY_AFTER),
    500: _error("an engine error; the worker survives and serves the next request"),
    503: _error("not ready (`not_ready`, with `state` and `reason`), draining, queue timeout (`queue_timeout`) or "
                "shutdown; `Retry-After` where a retry can succeed", headers=RETRY_AFTER),
}


def stream_or_json(description: str, data: str) -> dict:
    """200 as JSON, or with `stream: true` as Server-Sent Events (before Open API 3.2, the schema
    of text/event-stream describes one event)."""
    event = {"type": "object", "required": ["data"],
             "properties": {"data": {"type": "string", "description": data}, "event": {"type": "string"}}}
    return {200: {"content": {"text/event-stream": {"schema": event}}, "description": description}}


OPENAI_RESPONSES = {**stream_or_json("JSON, or with stream=true SSE chunks ending with `data: [DONE]`",
                                     "a chunk object (JSON), an `error` object (JSON), or `[DONE]`"),
                    **GENERATION_ERRORS, 404: _error("`model` is not the served model id (`model_not_found`)")}


def current_limits(service: Service) -> dict:
    """x-limit name -> value: the settings', and once loaded, the model's."""
    settings, engine = service.settings, service.engine
    if engine is None:
        return {"max_new_tokens": settings.max_new_tokens_limit}
    return {"max_new_tokens": max_new_tokens_bound(settings, engine.capacity),
            "prompt_tokens": engine.capacity - 1, "token_id": engine.target.spec.vocab_size - 1,
            "speculators": speculators(engine)}


def fill_limits(node, limits: dict) -> None:
    if isinstance(node, dict):
        name = node.get("x-limit")
        if name in limits:
            node[LIMIT_KEYWORDS[name]] = limits[name]
        for child in node.values():
            fill_limits(child, limits)
    elif isinstance(node, list):
        for child in node:
            fill_limits(child, limits)


def require_bearer(schema: dict, open_paths: Iterable[str]) -> None:
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http", "scheme": "bearer", "description": "the server's `api_key`"}
    for path, operations in schema.get("paths", {}).items():
        if path not in open_paths:
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]


def install_contract(app: FastAPI, service: Service, open_paths: Iterable[str]) -> None:
    """Serve /openapi.json with the current limits (and the bearer scheme when an API key is set)."""
    static = FastAPI.openapi

    def openapi() -> dict:
        schema = copy.deepcopy(static(app))  # FastAPI builds (and caches) the static part once
        fill_limits(schema, current_limits(service))
        if service.settings.api_key:
            require_bearer(schema, frozenset(open_paths))
        return schema

    app.openapi = openapi
