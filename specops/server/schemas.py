"""Request and response types of the native API (/generate, /health), and the error shape.

Static limits live here (pydantic turns them into 422 messages naming the field and the
limit, and FastAPI into the OpenAPI schema). Limits that depend on settings or on the loaded
model carry an `x-limit` mark: contract.py writes their value into /openapi.json and
validation.py enforces the same value.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, WithJsonSchema
from pydantic_core import PydanticCustomError

from ..engine.sampling_params import SPECULATORS

MAX_K_DRAFT = 16
MAX_STOP = 16  # stop strings per request
MAX_STOP_CHARS = 256  # characters per stop string
MAX_GRAMMAR_CHARS = 65536  # characters of a regex, grammar or JSON schema (as text)


def limit(name: str) -> dict:
    """The mark of a limit contract.py fills in (a setting, or a fact of the loaded model)."""
    return {"x-limit": name}


def _whole_number(value):
    # JSON has one number type: 15.0 is the integer 15 (as JSON Schema says); 15.5, "15" and true are not
    return int(value) if type(value) is float and value.is_integer() else value


def Integer(**limits):  # noqa: N802 (a type)
    """An integer type with Field limits (ge, le, json_schema_extra); a whole float is taken as
    its integer (the limits sit inside the conversion, so the schema keeps them)."""
    return Annotated[int, Field(**limits), BeforeValidator(_whole_number)]


Speculator = Annotated[Literal[SPECULATORS], Field(json_schema_extra=limit("speculators"))]  # type: ignore[valid-type]
NewTokens = Integer(ge=1, json_schema_extra=limit("max_new_tokens"))
StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
Stop = Optional[Union[StopString, Annotated[list[StopString], Field(max_length=MAX_STOP)]]]


UNSUPPORTED = "unsupported"  # the pydantic error type of a field we do not honour: a 400, not a 422


def _must_be_false(value: bool) -> bool:
    if value:
        raise PydanticCustomError(UNSUPPORTED, "not supported (must be false or absent)")
    return value


def _must_be_absent(value):
    if value is not None:
        raise PydanticCustomError(UNSUPPORTED, "not supported (must be null or absent)")
    return value


# a flag we cannot honour: false or absent, never true (and never 0: strict)
Unsupported = Annotated[StrictBool, AfterValidator(_must_be_false), Field(json_schema_extra={"const": False})]
# an OpenAI field we do not honour: null or absent (anything else is a 400 naming it)
Absent = Annotated[Optional[Any], AfterValidator(_must_be_absent), WithJsonSchema({"type": "null"})]

CONSTRAINT_FIELDS = ("regex", "grammar")


class ConstraintFields(BaseModel):
    """Extension fields (on /generate and the OpenAI endpoints): the output must match a regex or
    a grammar. At most one constraint per request; one that does not compile is a 400 with the
    compiler's message."""

    model_config = ConfigDict(strict=True)
    regex: Optional[Annotated[str, Field(min_length=1, max_length=MAX_GRAMMAR_CHARS)]] = Field(
        None, description="the output must match this regular expression (Rust `regex` syntax, anchored at both "
        "ends); specops extension")
    grammar: Optional[Annotated[str, Field(min_length=1, max_length=MAX_GRAMMAR_CHARS)]] = Field(
        None, description="the output must match this grammar: Lark (llguidance's dialect, with `%json {schema}` "
        "terminals) or GBNF (llama.cpp's); specops extension")


class SamplingFields(BaseModel):
    """Per-request sampling fields shared by /generate and the OpenAI endpoints. Strict: a
    bool, a number and a string are never converted into one another."""

    model_config = ConfigDict(strict=True)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0, description="0 = greedy")
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    top_k: Optional[Integer(ge=0)] = Field(None, description="0 = off")
    seed: Optional[Integer(ge=0)] = Field(None, description="seed of the sampler (sampling only)")
    stop: Stop = Field(None, description=f"stop string(s): at most {MAX_STOP}, each 1..{MAX_STOP_CHARS} characters")
    speculator: Optional[Speculator] = Field(None, description="default: the server's setting; `draft` and "
                                             "`hybrid` only with a draft model loaded")
    k_draft: Optional[Integer(ge=0, le=MAX_K_DRAFT)] = Field(None, description="upper bound on proposals per round")
    stream: bool = Field(False, description="answer with Server-Sent Events")
    ignore_eos: bool = Field(False, description="keep generating past an end-of-sequence token, up to the token "
                             "budget (as vLLM's `ignore_eos`, for benchmarks at equal lengths): the token counts as "
                             "generated, its text is empty; stop strings still stop")


PROMPT_LIMITS = ("Limits that depend on tokenization: the prompt must tokenize to at least 1 token (422 "
                 "`empty_prompt`), and prompt tokens + the token budget must fit the context cap (413 "
                 "`context_length_exceeded`, naming both counts). Text must be Unicode: a lone surrogate escape "
                 "(`\\ud800`) is a 422.")


class GenerateRequest(SamplingFields, ConstraintFields):
    """The seed's request {prompt, max_new_tokens, k_draft} plus optional sampling fields.

    Strict: wrong types and unknown fields are errors, not silent conversions."""

    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra={"description": PROMPT_LIMITS})
    prompt: str = Field(min_length=1, description="raw text; no chat template is applied")
    max_new_tokens: Optional[NewTokens] = Field(None, description="1..min(max_new_tokens_limit, context cap - 1); "
                                                "default from settings (lowered to what the context leaves)")
    temperature: Optional[float] = Field(0.0, ge=0.0, le=2.0, description="0 = greedy (the default)")


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    message: str = Field(description="what is wrong, naming the field and its limit")
    type: str = Field(description="invalid_request_error, authentication_error, not_found_error, "
                      "rate_limit_error, service_unavailable or server_error")
    param: Optional[str] = Field(None, description="the request field at fault")
    code: Optional[str] = Field(None, description="machine-readable reason, e.g. context_length_exceeded")


class ErrorResponse(BaseModel):
    """Every error (the OpenAI shape); 503s add `state` and `reason`."""

    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateResponse(BaseModel):
    generated_text: str
    tokens_per_second: float = Field(description="generated tokens / generation time (queue wait excluded)")
    avg_tokens_per_jump: float = Field(description="tokens committed per target pass while decoding")
    latency_ms: float = Field(description="admission to last token, queue wait included")
    finish_reason: str = Field(description="stop, length, timeout or cancelled")
    speculator: str
    usage: Usage
    acceptance_rate: float = Field(description="accepted / proposed tokens")
    draft_tokens: int = Field(description="tokens proposed by the speculator")
    accepted_tokens: int
    target_passes: int
    forced_tokens: int = Field(description="accepted tokens the request's grammar forced (proposed for free; "
                               "included in draft_tokens and accepted_tokens)")
    queue_ms: float
    ttft_ms: float = Field(description="time to first token, queue wait included")


class StreamDelta(BaseModel):
    """One SSE event of /generate with stream=true; the last one is a GenerateResponse + type=done."""

    type: Literal["token"] = "token"
    text: str
    token_count: int


class HealthResponse(BaseModel):
    status: str = Field(description="starting, syncing, loading, warming, ready, failed or draining")
    reason: Optional[str] = Field(None, description="why the state is failed (which file, what error)")
    state_age_s: float
    uptime_s: float
    models: dict = Field(default_factory=dict, description="what is loaded, once it is")
    queue_depth: int = 0
    in_flight: int = 0
