"""Request and response types of the native API (/generate, /health).

Static limits live here (pydantic turns them into 422 messages naming the field and the
limit); limits that depend on settings or the loaded model (max_new_tokens, prompt length in
tokens) are checked in validation.py.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from ..engine.sampling_params import SPECULATORS

Speculator = Literal[SPECULATORS]  # type: ignore[valid-type]
MAX_K_DRAFT = 16
MAX_STOP = 16
Stop = Optional[Union[str, list[str]]]


class SamplingFields(BaseModel):
    """Per-request sampling fields shared by /generate and the OpenAI endpoints."""

    temperature: Optional[float] = Field(None, ge=0.0, le=2.0, description="0 = greedy")
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    top_k: Optional[int] = Field(None, ge=0, description="0 = off")
    seed: Optional[int] = Field(None, ge=0, description="seed of the sampler (sampling only)")
    stop: Stop = Field(None, description=f"stop string(s), at most {MAX_STOP}")
    speculator: Optional[Speculator] = Field(None, description="default: the server's setting")
    k_draft: Optional[int] = Field(None, ge=0, le=MAX_K_DRAFT, description="upper bound on proposals per round")
    stream: bool = Field(False, description="answer with Server-Sent Events")


class GenerateRequest(SamplingFields):
    """The seed's request {prompt, max_new_tokens, k_draft} plus optional sampling fields.

    Strict: wrong types and unknown fields are errors, not silent conversions."""

    model_config = ConfigDict(strict=True, extra="forbid")
    prompt: str = Field(min_length=1, description="raw text; no chat template is applied")
    max_new_tokens: Optional[int] = Field(None, description="1..max_new_tokens_limit; default from settings")
    temperature: Optional[float] = Field(0.0, ge=0.0, le=2.0, description="0 = greedy (the default)")


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
