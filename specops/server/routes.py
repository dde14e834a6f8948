"""Native endpoints: /health, /health/live, /metrics, /generate (the seed's API)."""
from __future__ import annotations

import json
import os
from typing import AsyncIterator, Callable

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .backend import ClientGone, Delta, Finished, Ticket
from .contract import GENERATION_ERRORS, stream_or_json
from .errors import ServiceError, error_body
from .schemas import GenerateRequest, GenerateResponse, HealthResponse, StreamDelta
from .service import Service, get_service
from .structured import compiling, constraint_grammar
from .validation import ValidRequest, validate

router = APIRouter()

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


@router.get("/health/live", tags=["health"])
def live() -> dict:
    """Liveness: 200 while the process and its event loop answer, even during a long sync."""
    return {"status": "alive", "pid": os.getpid()}


@router.get("/health", tags=["health"], response_model=HealthResponse,
            responses={503: {"model": HealthResponse, "description": "not ready: state and reason"}})
def health(service: Service = Depends(get_service)) -> JSONResponse:
    """Readiness: 200 only when a generation can be served, else 503 with the state."""
    body = service.health.snapshot()
    queued, running = service.worker.load()
    body.update(models=service.health.models, queue_depth=queued, in_flight=running)
    return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)


@router.get("/metrics", tags=["health"], response_class=PlainTextResponse,
            responses={200: {"description": "Prometheus text exposition format (text/plain; version=1.0.0)"}})
def metrics(service: Service = Depends(get_service)) -> Response:
    """Prometheus metrics of this process (docs/service.md lists them)."""
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def respond(request: Request, service: Service, valid: ValidRequest, whole: Callable[[Finished], dict],
                  events: Callable[[Ticket], AsyncIterator[str]]):
    """Admit, then answer JSON (`whole`) or SSE (`events`). A stream's headers wait until the
    job starts, so queue errors (timeout, shutdown) still get their own status code."""
    ticket = service.backend.admit(valid)
    try:
        if valid.stream:
            await service.backend.start_stream(request, ticket)
            return StreamingResponse(events(ticket), media_type="text/event-stream", headers=SSE_HEADERS)
        return whole(await service.backend.run(request, ticket))
    except ClientGone:
        return Response(status_code=499)  # nobody reads it; nginx's "client closed request"


def generate_response(done: Finished) -> dict:
    r, s = done.result, done.result.stats
    return GenerateResponse(
        generated_text=r.text, tokens_per_second=round(s.tokens_per_second, 3),
        avg_tokens_per_jump=round(s.tokens_per_jump, 4), latency_ms=round(done.latency_s * 1000, 3),
        finish_reason=r.finish_reason, speculator=s.speculator,
        usage={"prompt_tokens": s.prompt_tokens, "completion_tokens": s.generated_tokens,
               "total_tokens": s.prompt_tokens + s.generated_tokens},
        acceptance_rate=round(s.acceptance_rate, 4), draft_tokens=s.proposed, accepted_tokens=s.accepted,
        target_passes=s.target_passes, forced_tokens=s.forced_accepted, queue_ms=round(done.queue_s * 1000, 3),
        ttft_ms=round(done.ttft_s * 1000, 3)).model_dump()


def sse_error(err: ServiceError) -> str:
    return sse({"type": "error", **error_body(err.message, err.type, err.param, err.code)})


async def _generate_events(ticket: Ticket) -> AsyncIterator[str]:
    async for item in ticket.stream():
        if isinstance(item, Delta):
            yield sse(StreamDelta(text=item.text, token_count=item.token_count).model_dump())
        elif isinstance(item, ServiceError):
            yield sse_error(item)
        else:
            yield sse({"type": "done", **generate_response(item)})


@router.post("/generate", tags=["generate"], response_model=GenerateResponse,
             responses={**stream_or_json("JSON, or with stream=true SSE: token events, then a done event",
                                         "JSON: {type: token, text, token_count}, then {type: done, ...the JSON "
                                         "response}, or {type: error, error: {...}}"),
                        **GENERATION_ERRORS})
async def generate(req: GenerateRequest, request: Request, service: Service = Depends(get_service)):
    """Generate from a raw text prompt; `stream: true` answers with Server-Sent Events."""
    engine = service.ready_engine()
    grammar = await compiling(constraint_grammar, req, engine.grammars)  # (a compile may take seconds)
    valid = validate(req, req.prompt, req.max_new_tokens, engine, service.settings, default_temperature=0.0,
                     grammar=grammar)
    return await respond(request, service, valid, generate_response, _generate_events)
