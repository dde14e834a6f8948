"""OpenAI-compatible endpoints: /v1/models, /v1/completions, /v1/chat/completions.

Shapes follow the OpenAI API closely enough for the official `openai` client; the
speculative-decoding statistics ride along in an extra `specops` field. Streams are SSE
chunks ending with `data: [DONE]`.
"""
from __future__ import annotations

import time
import uuid
from typing import AsyncIterator

from fastapi import APIRouter, Depends, Request

from ..runtime.tokenizer import ChatMessage
from .backend import Delta, Finished, Ticket
from .contract import AUTH_ERRORS, OPENAI_RESPONSES
from .errors import ModelNotFound, ServiceError, error_body
from .openai_schemas import ChatCompletionRequest, CompletionRequest, OpenAIFields
from .routes import respond, sse
from .service import Service, get_service
from .validation import chat_prompt, check_max_new_tokens, validate

router = APIRouter(prefix="/v1", tags=["openai"])

OPENAI_DEFAULT_TEMPERATURE = 1.0  # as the OpenAI API; send temperature=0 for greedy


def _finish_reason(reason: str) -> str:
    return {"timeout": "length", "cancelled": "stop"}.get(reason, reason)


def _usage(done: Finished) -> dict:
    s = done.result.stats
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.generated_tokens,
            "total_tokens": s.prompt_tokens + s.generated_tokens}


def _specops_stats(done: Finished) -> dict:
    s = done.result.stats
    return {"speculator": s.speculator, "tokens_per_second": round(s.tokens_per_second, 3),
            "avg_tokens_per_jump": round(s.tokens_per_jump, 4), "acceptance_rate": round(s.acceptance_rate, 4),
            "latency_ms": round(done.latency_s * 1000, 3), "ttft_ms": round(done.ttft_s * 1000, 3),
            "finish_reason": done.result.finish_reason}


def _check_model(req: OpenAIFields, service: Service) -> None:
    name = service.settings.served_model_name
    if req.model is not None and req.model != name:
        raise ModelNotFound(f"model: {req.model!r} does not exist; this server serves {name!r}",
                            param="model", code="model_not_found")


@router.get("/models", responses=AUTH_ERRORS)
def models(service: Service = Depends(get_service)) -> dict:
    return {"object": "list", "data": [{"id": service.settings.served_model_name, "object": "model",
                                        "created": service.created, "owned_by": "specops"}]}


class _Stream:
    """Shared streaming loop: one chunk per delta, a chunk with finish_reason, usage, [DONE]."""

    def __init__(self, kind: str, service: Service, include_usage: bool):
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        self.object = "chat.completion.chunk" if kind == "chat" else "text_completion"
        self.kind, self.model, self.created = kind, service.settings.served_model_name, int(time.time())
        self.include_usage = include_usage

    def chunk(self, choices: list[dict], **extra) -> str:
        return sse({"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                    "choices": choices, **extra})

    def choice(self, text: str | None, finish: str | None, first: bool = False) -> dict:
        if self.kind == "chat":
            delta = {} if text is None else ({"role": "assistant", "content": text} if first else {"content": text})
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

    async def events(self, ticket: Ticket) -> AsyncIterator[str]:
        if self.kind == "chat":
            yield self.chunk([self.choice("", None, first=True)])
        async for item in ticket.stream():
            if isinstance(item, Delta):
                if item.text:
                    yield self.chunk([self.choice(item.text, None)])
                continue
            if isinstance(item, ServiceError):  # as OpenAI streams an error: an `error` object
                yield sse(error_body(item.message, item.type, item.param, item.code))
                break
            yield self.chunk([self.choice(None, _finish_reason(item.result.finish_reason))],
                             specops=_specops_stats(item))
            if self.include_usage:
                yield self.chunk([], usage=_usage(item))
        yield sse("[DONE]")


@router.post("/completions", responses=OPENAI_RESPONSES)
async def completions(req: CompletionRequest, request: Request, service: Service = Depends(get_service)):
    _check_model(req, service)
    engine = service.ready_engine()
    valid = validate(req, req.prompt_text(), req.max_tokens, engine, service.settings,
                     default_temperature=OPENAI_DEFAULT_TEMPERATURE, budget_field="max_tokens")

    def whole(done: Finished) -> dict:
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": service.settings.served_model_name,
                "choices": [{"index": 0, "text": done.result.text, "logprobs": None,
                             "finish_reason": _finish_reason(done.result.finish_reason)}],
                "usage": _usage(done), "specops": _specops_stats(done)}

    usage = bool(req.stream_options and req.stream_options.include_usage)
    return await respond(request, service, valid, whole, _Stream("text", service, usage).events)


@router.post("/chat/completions", responses=OPENAI_RESPONSES)
async def chat_completions(req: ChatCompletionRequest, request: Request, service: Service = Depends(get_service)):
    _check_model(req, service)
    engine = service.ready_engine()
    if req.max_completion_tokens is not None:  # max_tokens is then unused, but must still be within its limit
        check_max_new_tokens(req.max_tokens, service.settings, engine.capacity, "max_tokens")
    prompt = chat_prompt([ChatMessage(m.role, m.text()) for m in req.messages], engine)
    valid = validate(req, prompt, req.token_budget(), engine, service.settings,
                     default_temperature=OPENAI_DEFAULT_TEMPERATURE,
                     budget_field="max_tokens" if req.max_completion_tokens is None else "max_completion_tokens",
                     prompt_field="messages")

    def whole(done: Finished) -> dict:
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": service.settings.served_model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": done.result.text},
                             "logprobs": None, "finish_reason": _finish_reason(done.result.finish_reason)}],
                "usage": _usage(done), "specops": _specops_stats(done)}

    usage = bool(req.stream_options and req.stream_options.include_usage)
    return await respond(request, service, valid, whole, _Stream("chat", service, usage).events)
