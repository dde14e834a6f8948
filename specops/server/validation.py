"""Raw request -> valid request, before anything reaches the engine (as TGI's validation).

Checks the limits that depend on settings and on the loaded model: max_new_tokens within
1..max_new_tokens_limit, a prompt that tokenizes to 1..capacity-1 tokens, a speculator the
loaded models can run. Static limits (types, k_draft 0..16, ...) are already enforced by
the schemas. Every refusal names the field and the limit.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from ..engine.llm_engine import Engine
from ..engine.sampling_params import SamplingParams
from ..runtime.tokenizer import ChatMessage
from .errors import InvalidRequest
from .schemas import MAX_STOP, SamplingFields


@dataclass(frozen=True)
class ValidRequest:
    prompt_ids: list[int]
    params: SamplingParams
    stream: bool


def check_max_new_tokens(value: int | None, settings: Settings, field: str = "max_new_tokens") -> int:
    limit = settings.max_new_tokens_limit
    value = min(settings.default_max_new_tokens, limit) if value is None else value
    if not 1 <= value <= limit:
        raise InvalidRequest(f"{field}: must be in 1..{limit} (got {value})", param=field, code="invalid_value")
    return value


def check_prompt_ids(ids: list[int], engine: Engine, field: str = "prompt") -> list[int]:
    if not ids:
        raise InvalidRequest(f"{field}: is empty after tokenization (must have at least 1 token)",
                             param=field, code="empty_prompt")
    if len(ids) >= engine.capacity:
        raise InvalidRequest(f"{field}: has {len(ids)} tokens; the context cap is {engine.capacity} "
                             f"(at most {engine.capacity - 1} prompt tokens)",
                             param=field, code="context_length_exceeded", status=400)
    vocab = engine.target.spec.vocab_size
    if any(not 0 <= i < vocab for i in ids):
        raise InvalidRequest(f"{field}: token ids must be in 0..{vocab - 1}", param=field, code="invalid_value")
    return ids


def chat_prompt(messages: list[ChatMessage], engine: Engine) -> str:
    if not engine.tokenizer.has_chat_template:
        raise InvalidRequest("messages: this model has no chat template; use /v1/completions",
                             param="messages", code="no_chat_template", status=400)
    return engine.tokenizer.apply_chat_template(messages)


def _stops(stop) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(stops) > MAX_STOP:
        raise InvalidRequest(f"stop: at most {MAX_STOP} stop strings (got {len(stops)})", param="stop")
    if any(not s for s in stops):
        raise InvalidRequest("stop: stop strings must not be empty", param="stop")
    return stops


def sampling_params(req: SamplingFields, max_new_tokens: int, settings: Settings, engine: Engine,
                    default_temperature: float) -> SamplingParams:
    speculator = req.speculator or settings.speculator
    if speculator in ("draft", "hybrid") and engine.draft is None:
        raise InvalidRequest(f"speculator: {speculator!r} needs a draft model and none is loaded "
                             "(use none, ngram or auto)", param="speculator", code="invalid_value")
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=default_temperature if req.temperature is None else req.temperature,
        top_k=req.top_k or 0, top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed,
        stop=_stops(req.stop), speculator=speculator,
        k_draft=settings.k_draft if req.k_draft is None else req.k_draft)


def validate(req: SamplingFields, prompt: str | list[int], max_new_tokens: int | None, engine: Engine,
             settings: Settings, *, default_temperature: float, budget_field: str = "max_new_tokens",
             prompt_field: str = "prompt") -> ValidRequest:
    budget = check_max_new_tokens(max_new_tokens, settings, budget_field)
    params = sampling_params(req, budget, settings, engine, default_temperature)
    ids = engine.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    return ValidRequest(check_prompt_ids(ids, engine, prompt_field), params, req.stream)
