"""Request types of the OpenAI-compatible endpoints (/v1/completions, /v1/chat/completions).

Lenient like the OpenAI API itself: unknown fields are ignored (clients send many), numbers
may come as ints. Fields we cannot honour (n > 1, logprobs, penalties) are refused with a
422 rather than silently ignored. Responses are built as plain dicts in openai_routes.py.
"""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .schemas import SamplingFields


class StreamOptions(BaseModel):
    include_usage: bool = False


class OpenAIFields(SamplingFields):
    model_config = ConfigDict(extra="ignore")
    model: Optional[str] = Field(None, description="must be the served model id when given")
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0, description="default 1.0 as in OpenAI; 0 = greedy")
    n: int = Field(1, ge=1, le=1, description="one choice per request (batch 1)")
    stream_options: Optional[StreamOptions] = None
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0, description="not supported: must be 0")
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0, description="not supported: must be 0")
    user: Optional[str] = None


class CompletionRequest(OpenAIFields):
    prompt: Union[str, list[str], list[int]] = Field(description="text, a one-item list of text, or token ids")
    max_tokens: Optional[int] = Field(None, description="1..max_new_tokens_limit (checked in validation)")
    echo: bool = Field(False, description="not supported: must be false")
    logprobs: Optional[int] = Field(None, le=0, description="not supported")

    @model_validator(mode="after")
    def _one_prompt(self):
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str) and len(self.prompt) != 1:
            raise ValueError(f"prompt: one prompt per request (got a list of {len(self.prompt)})")
        if self.echo:
            raise ValueError("echo: not supported (must be false)")
        return self

    def prompt_text(self) -> Union[str, list[int]]:
        """The prompt as text, or as token ids when the client sent ids."""
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str):
            return self.prompt[0]
        return self.prompt


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: Union[str, list[TextPart]]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(OpenAIFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, description="deprecated name of max_completion_tokens")
    max_completion_tokens: Optional[int] = Field(None, description="1..max_new_tokens_limit")
    logprobs: Optional[bool] = Field(None, description="not supported")

    @model_validator(mode="after")
    def _no_logprobs(self):
        if self.logprobs:
            raise ValueError("logprobs: not supported")
        return self

    def token_budget(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
