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

from .backend import Delta, Finished, Ticket
from .contract import AUTH_ERRORS, OPENAI_RESPONSES
from .errors import InvalidRequest, ModelNotFound, ServiceError, error_body
from .openai_logprobs import chat_logprobs, completion_logprobs
from .openai_schemas import ChatCompletionRequest, CompletionRequest, OpenAIFields
from .routes import respond, sse
from .service import Service, get_service
from .structured import chat_constraint, compiling, constraint_grammar
from .tool_calls import ToolCallParser
from .validation import chat_prompt, check_max_new_tokens, validate

router = APIRouter(prefix="/v1", tags=["openai"])

OPENAI_DEFAULT_TEMPERATURE = 1.0  # as the OpenAI API; send temperature=0 for greedy


def _finish_reason(reason: str, tool_calls: bool = False) -> str:
    if tool_calls and reason == "stop":
        return "tool_calls"
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
            "forced_tokens": s.forced_accepted, "finish_reason": done.result.finish_reason}


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
    """Shared streaming loop: one chunk per delta, a chunk with finish_reason, usage, [DONE].
    With tools the text goes through the tool-call parser: content deltas or `tool_calls` deltas."""

    def __init__(self, kind: str, service: Service, include_usage: bool, logprobs: bool = False,
                 tools: bool = False):
        self.id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        self.object = "chat.completion.chunk" if kind == "chat" else "text_completion"
        self.kind, self.model, self.created = kind, service.settings.served_model_name, int(time.time())
        self.include_usage, self.logprobs = include_usage, logprobs
        self.grammars = service.engine.grammars
        self.parser = ToolCallParser() if tools else None
        self.offset = 0  # characters streamed so far (completions' text_offset)

    def chunk(self, choices: list[dict], **extra) -> str:
        return sse({"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                    "choices": choices, **extra})

    def choice(self, delta: dict | str | None, finish: str | None, logprobs: list | None = None) -> dict:
        if self.kind == "chat":
            lp = chat_logprobs(self.grammars, logprobs) if self.logprobs and logprobs else None
            return {"index": 0, "delta": delta or {}, "logprobs": lp, "finish_reason": finish}
        lp = completion_logprobs(self.grammars, logprobs, self.offset) if self.logprobs and logprobs else None
        self.offset += len(delta or "")
        return {"index": 0, "text": delta or "", "logprobs": lp, "finish_reason": finish}

    def deltas(self, text: str, final: bool = False) -> list[dict | str]:
        if self.kind != "chat":
            return [text] if text else []
        if self.parser is not None:
            return self.parser.feed(text, final)
        return [{"content": text}] if text else []

    async def events(self, ticket: Ticket) -> AsyncIterator[str]:
        if self.kind == "chat":
            yield self.chunk([self.choice({"role": "assistant", "content": ""}, None)])
        async for item in ticket.stream():
            if isinstance(item, Delta):
                deltas = self.deltas(item.text) or ([{}] if item.logprobs and self.logprobs else [])
                for i, delta in enumerate(deltas):
                    yield self.chunk([self.choice(delta, None, item.logprobs if i == 0 else None)])
                continue
            if isinstance(item, ServiceError):  # as OpenAI streams an error: an `error` object
                yield sse(error_body(item.message, item.type, item.param, item.code))
                break
            for delta in self.deltas("", final=True):
                yield self.chunk([self.choice(delta, None)])
            calls = self.parser is not None and self.parser.result()[1]
            yield self.chunk([self.choice(None, _finish_reason(item.result.finish_reason, bool(calls)))],
                             specops=_specops_stats(item))
            if self.include_usage:
                yield self.chunk([], usage=_usage(item))
        yield sse("[DONE]")


@router.post("/completions", responses=OPENAI_RESPONSES)
async def completions(req: CompletionRequest, request: Request, service: Service = Depends(get_service)):
    _check_model(req, service)
    engine = service.ready_engine()
    grammar = await compiling(constraint_grammar, req, engine.grammars)
    valid = validate(req, req.prompt_text(), req.max_tokens, engine, service.settings,
                     default_temperature=OPENAI_DEFAULT_TEMPERATURE, budget_field="max_tokens",
                     grammar=grammar, logprobs=req.logprobs)

    def whole(done: Finished) -> dict:
        r = done.result
        lp = None if r.logprobs is None else completion_logprobs(engine.grammars, r.logprobs)
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": service.settings.served_model_name,
                "choices": [{"index": 0, "text": r.text, "logprobs": lp,
                             "finish_reason": _finish_reason(r.finish_reason)}],
                "usage": _usage(done), "specops": _specops_stats(done)}

    usage = bool(req.stream_options and req.stream_options.include_usage)
    stream = _Stream("text", service, usage, logprobs=req.logprobs is not None)
    return await respond(request, service, valid, whole, stream.events)


def _chat_logprobs(req: ChatCompletionRequest) -> int | None:
    if req.top_logprobs is not None and not req.logprobs:
        raise InvalidRequest("top_logprobs: needs logprobs: true", param="top_logprobs", code="invalid_value",
                             status=400)
    return (req.top_logprobs or 0) if req.logprobs else None


@router.post("/chat/completions", responses=OPENAI_RESPONSES)
async def chat_completions(req: ChatCompletionRequest, request: Request, service: Service = Depends(get_service)):
    _check_model(req, service)
    engine = service.ready_engine()
    if req.max_completion_tokens is not None:  # max_tokens is then unused, but must still be within its limit
        check_max_new_tokens(req.max_tokens, service.settings, engine.capacity, "max_tokens")
    plan, grammar = await compiling(chat_constraint, req, engine.grammars)  # (a compile may take seconds)
    logprobs = _chat_logprobs(req)
    valid = validate(req, chat_prompt(plan.messages, engine), req.token_budget(), engine, service.settings,
                     default_temperature=OPENAI_DEFAULT_TEMPERATURE,
                     budget_field="max_tokens" if req.max_completion_tokens is None else "max_completion_tokens",
                     prompt_field="messages", grammar=grammar, logprobs=logprobs)

    def whole(done: Finished) -> dict:
        r = done.result
        content, calls = r.text, []
        if plan.active:
            parser = ToolCallParser()
            parser.feed(r.text, final=True)
            content, calls = parser.result()
        message = {"role": "assistant", "content": content, **({"tool_calls": calls} if calls else {})}
        lp = None if r.logprobs is None else chat_logprobs(engine.grammars, r.logprobs)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": service.settings.served_model_name,
                "choices": [{"index": 0, "message": message, "logprobs": lp,
                             "finish_reason": _finish_reason(r.finish_reason, bool(calls))}],
                "usage": _usage(done), "specops": _specops_stats(done)}

    usage = bool(req.stream_options and req.stream_options.include_usage)
    stream = _Stream("chat", service, usage, logprobs=logprobs is not None, tools=plan.active)
    return await respond(request, service, valid, whole, stream.events)
