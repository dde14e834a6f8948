"""Request types of the OpenAI-compatible endpoints (/v1/completions, /v1/chat/completions).

Unknown fields are ignored, as in the OpenAI API (clients send many); known fields are
strict, as on /generate: `"prompt": [false]` or `"logprobs": 0` is a 422, never a
conversion. Fields we cannot honour (n > 1, logprobs, echo, penalties) are refused with a
422 rather than silently ignored, and the schema says so (n: 1..1, echo: const false, ...).
Responses are built as plain dicts in openai_routes.py.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from .schemas import PROMPT_LIMITS, Integer, NewTokens, SamplingFields, Unsupported, limit

STRICT = ConfigDict(strict=True)

TokenId = Integer(ge=0, json_schema_extra=limit("token_id"))
Prompt = Union[
    Annotated[str, Field(min_length=1)],
    Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=1)],
    Annotated[list[TokenId], Field(min_length=1, json_schema_extra=limit("prompt_tokens"))],
]


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class OpenAIFields(SamplingFields):
    model_config = ConfigDict(strict=True, extra="ignore", json_schema_extra={"description": PROMPT_LIMITS})
    model: Optional[str] = Field(None, description="must be the served model id when given (else 404)")
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0, description="default 1.0 as in OpenAI; 0 = greedy")
    n: Integer(ge=1, le=1) = Field(1, description="one choice per request (batch 1)")
    stream_options: Optional[StreamOptions] = None
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0, description="not supported: must be 0")
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0, description="not supported: must be 0")
    user: Optional[str] = None


class CompletionRequest(OpenAIFields):
    prompt: Prompt = Field(description="text, a one-item list of text, or token ids (each below the vocabulary "
                           "size, fewer than the context cap)")
    max_tokens: Optional[NewTokens] = Field(None, description="1..min(max_new_tokens_limit, context cap - 1)")
    echo: Unsupported = Field(False, description="not supported: must be false")
    logprobs: None = Field(None, description="not supported: must be null or absent")

    def prompt_text(self) -> Union[str, list[int]]:
        """The prompt as text, or as token ids when the client sent ids."""
        if isinstance(self.prompt, list) and isinstance(self.prompt[0], str):
            return self.prompt[0]
        return self.prompt


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = STRICT
    role: Literal["system", "user", "assistant"]
    content: Union[str, list[TextPart]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(OpenAIFields):
    messages: list[ChatMessageIn] = Field(min_length=1, description="rendered with the model's chat template "
                                          "(400 `no_chat_template` if it has none)")
    max_tokens: Optional[NewTokens] = Field(None, description="deprecated name of max_completion_tokens")
    max_completion_tokens: Optional[NewTokens] = Field(None, description="1..min(max_new_tokens_limit, "
                                                       "context cap - 1)")
    logprobs: Optional[Unsupported] = Field(None, description="not supported: false, null or absent")

    def token_budget(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
