"""Raw request -> valid request, before anything reaches the engine (as TGI's validation).

Checks the limits that depend on settings and on the loaded model, each the value
/openapi.json states (contract.py): max_new_tokens within 1..min(max_new_tokens_limit,
context cap - 1), a speculator the loaded models can run, token ids below the vocabulary
size. Then the limits that depend on tokenization, which no schema can state: a prompt that
tokenizes to at least 1 token (422), and prompt + token budget within the context cap (413).
Static limits (types, k_draft 0..16, stop strings, ...) are already enforced by the schemas.
Every refusal names the field and the limit, and what to change.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from ..engine.llm_engine import Engine
from ..engine.sampling_params import SPECULATORS, SamplingParams
from ..runtime.tokenizer import ChatMessage
from .errors import InvalidRequest, TooLarge
from .schemas import SamplingFields

NEEDS_DRAFT = ("draft", "hybrid")


@dataclass(frozen=True)
class ValidRequest:
    prompt_ids: list[int]
    params: SamplingParams
    stream: bool


def max_new_tokens_bound(settings: Settings, capacity: int) -> int:
    """The largest token budget a request may ask: the setting, and room for a 1-token prompt."""
    return min(settings.max_new_tokens_limit, capacity - 1)


def speculators(engine: Engine) -> list[str]:
    return [s for s in SPECULATORS if engine.draft is not None or s not in NEEDS_DRAFT]


def check_max_new_tokens(value: int | None, settings: Settings, capacity: int,
                         field: str = "max_new_tokens") -> int | None:
    """The request's budget (None: not given), within 1..bound."""
    bound = max_new_tokens_bound(settings, capacity)
    if value is not None and not 1 <= value <= bound:
        raise InvalidRequest(f"{field}: must be in 1..{bound} (got {value}; max_new_tokens_limit "
                             f"{settings.max_new_tokens_limit}, context cap {capacity})", param=field,
                             code="invalid_value")
    return value


def check_speculator(req: SamplingFields, settings: Settings, engine: Engine) -> str:
    speculator = req.speculator or settings.speculator
    if speculator in NEEDS_DRAFT and engine.draft is None:
        raise InvalidRequest(f"speculator: {speculator!r} needs a draft model and none is loaded "
                             "(use none, ngram or auto)", param="speculator", code="invalid_value")
    return speculator


def check_prompt_ids(ids: list[int], engine: Engine, field: str = "prompt") -> list[int]:
    if not ids:
        raise InvalidRequest(f"{field}: is empty after tokenization (must have at least 1 token)",
                             param=field, code="empty_prompt")
    vocab = engine.target.spec.vocab_size
    if any(not 0 <= i < vocab for i in ids):
        raise InvalidRequest(f"{field}: token ids must be in 0..{vocab - 1}", param=field, code="invalid_value")
    cap = engine.capacity
    if len(ids) >= cap:
        raise TooLarge(f"{field}: has {len(ids)} tokens; the context cap is {cap} tokens, so a prompt may have "
                       f"at most {cap - 1}: shorten the prompt", param=field, code="context_length_exceeded")
    return ids


def fit_context(prompt_tokens: int, budget: int | None, settings: Settings, capacity: int,
                field: str = "max_new_tokens", prompt_field: str = "prompt") -> int:
    """The token budget: the request's, if prompt + budget fit the context cap (else 413); without
    one, the default lowered to the room the prompt leaves."""
    room = capacity - prompt_tokens
    if budget is None:
        return min(settings.default_max_new_tokens, settings.max_new_tokens_limit, room)
    if budget > room:
        raise TooLarge(f"{prompt_field} ({prompt_tokens} tokens) + {field} ({budget}) = {prompt_tokens + budget} "
                       f"tokens; the context cap is {capacity}: lower {field} to at most {room} or shorten the "
                       f"prompt", param=field, code="context_length_exceeded")
    return budget


def chat_prompt(messages: list[ChatMessage], engine: Engine) -> str:
    if not engine.tokenizer.has_chat_template:
        raise InvalidRequest("messages: this model has no chat template; use /v1/completions",
                             param="messages", code="no_chat_template", status=400)
    return engine.tokenizer.apply_chat_template(messages)


def _stops(stop) -> tuple[str, ...]:
    return (stop,) if isinstance(stop, str) else tuple(stop or ())  # count and length: the schema's


def sampling_params(req: SamplingFields, max_new_tokens: int, speculator: str, settings: Settings,
                    default_temperature: float, grammar: str | None = None,
                    logprobs: int | None = None) -> SamplingParams:
    if grammar is not None and req.ignore_eos:
        raise InvalidRequest("ignore_eos: cannot be combined with an output constraint (the grammar ends the "
                             "output)", param="ignore_eos", code="invalid_value", status=400)
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=default_temperature if req.temperature is None else req.temperature,
        top_k=req.top_k or 0, top_p=1.0 if req.top_p is None else req.top_p, seed=req.seed,
        stop=_stops(req.stop), speculator=speculator,
        k_draft=settings.k_draft if req.k_draft is None else req.k_draft, ignore_eos=req.ignore_eos,
        grammar=grammar, logprobs=logprobs)


def validate(req: SamplingFields, prompt: str | list[int], max_new_tokens: int | None, engine: Engine,
             settings: Settings, *, default_temperature: float, budget_field: str = "max_new_tokens",
             prompt_field: str = "prompt", grammar: str | None = None, logprobs: int | None = None) -> ValidRequest:
    """`grammar`: a checked constraint (structured.py); `logprobs`: None, or the number of
    alternatives to report with each token's log-probability."""
    budget = check_max_new_tokens(max_new_tokens, settings, engine.capacity, budget_field)
    speculator = check_speculator(req, settings, engine)
    ids = engine.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    ids = check_prompt_ids(ids, engine, prompt_field)
    budget = fit_context(len(ids), budget, settings, engine.capacity, budget_field, prompt_field)
    params = sampling_params(req, budget, speculator, settings, default_temperature, grammar, logprobs)
    return ValidRequest(ids, params, req.stream)
