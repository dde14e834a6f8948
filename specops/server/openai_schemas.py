"""Request types of the OpenAI-compatible endpoints (/v1/completions, /v1/chat/completions).

Every field of the OpenAI API is either honoured or refused, never silently ignored: a field we
do not honour (logit_bias, echo, suffix, audio, prediction, ...) must be null/false/absent and
is otherwise a 400 naming it (code `unsupported_field`), as is a field the API does not have
(a typo must not pass for a default). Known fields are strict, as on /generate: `"prompt":
[false]` is a 422, never a conversion. Identifiers with no effect on the output (`user`,
`safety_identifier`, `prompt_cache_key`) are accepted. Extensions: top_k, speculator, k_draft,
ignore_eos (as vLLM's), regex and grammar. The schema says all of this field by field.
Responses are built as plain dicts in openai_routes.py.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from ..engine.logprobs import MAX_TOP_LOGPROBS
from .schemas import (PROMPT_LIMITS, Absent, ConstraintFields, Integer, NewTokens, SamplingFields, Unsupported,
                      limit)

STRICT = ConfigDict(strict=True, extra="forbid")
NOT_HONOURED = "not supported: must be null or absent (else 400 `unsupported_field`)"
IDENTIFIER = "accepted; an identifier with no effect on the output"

TokenId = Integer(ge=0, json_schema_extra=limit("token_id"))
Prompt = Union[
    Annotated[str, Field(min_length=1)],
    Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=1)],
    Annotated[list[TokenId], Field(min_length=1, json_schema_extra=limit("prompt_tokens"))],
]
FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class OpenAIFields(SamplingFields, ConstraintFields):
    model_config = ConfigDict(strict=True, extra="forbid", json_schema_extra={"description": PROMPT_LIMITS})
    model: Optional[str] = Field(None, description="must be the served model id when given (else 404)")
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0, description="default 1.0 as in OpenAI; 0 = greedy")
    n: Integer(ge=1, le=1) = Field(1, description="one choice per request")
    stream_options: Optional[StreamOptions] = None
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0, description="not supported: must be 0")
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0, description="not supported: must be 0")
    logit_bias: Absent = Field(None, description=NOT_HONOURED)
    user: Optional[str] = Field(None, description=IDENTIFIER)
    safety_identifier: Optional[str] = Field(None, description=IDENTIFIER)
    prompt_cache_key: Optional[str] = Field(None, description=IDENTIFIER)
    service_tier: Absent = Field(None, description=NOT_HONOURED)
    store: Optional[Unsupported] = Field(None, description="not supported: false, null or absent")
    metadata: Absent = Field(None, description=NOT_HONOURED)


class CompletionRequest(OpenAIFields):
    prompt: Prompt = Field(description="text, a one-item list of text, or token ids (each below the vocabulary "
                           "size, fewer than the context cap)")
    max_tokens: Optional[NewTokens] = Field(None, description="1..min(max_new_tokens_limit, context cap - 1)")
    echo: Unsupported = Field(False, description="not supported: must be false")
    logprobs: Optional[Integer(ge=0, le=5)] = Field(
        None, description="the log-probability of each generated token and of the `logprobs` likeliest tokens at "
        "its place; from the target's raw logits (before temperature, top-k/top-p and any grammar), so equal "
        "whatever the speculator")
    best_of: Optional[Integer(ge=1, le=1)] = Field(None, description="1 or absent (one choice per request)")
    suffix: Absent = Field(None, description=NOT_HONOURED)

    def prompt_text(self) -> Union[str, list[int]]:
        """The prompt as text, or as token ids when the client sent ids."""
        if isinstance(self.prompt, list) and isinstance(self.prompt[0], str):
            return self.prompt[0]
        return self.prompt


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    model_config = STRICT
    name: FunctionName
    arguments: str = Field(description="JSON text of the arguments")


class ToolCallIn(BaseModel):
    model_config = STRICT
    id: str
    type: Literal["function"]
    function: FunctionCall


Content = Union[str, list[TextPart]]


class _Message(BaseModel):
    model_config = STRICT

    def text(self) -> str:
        content = getattr(self, "content", None)
        if content is None:
            return ""
        return content if isinstance(content, str) else "".join(p.text for p in content)


class SystemMessage(_Message):
    role: Literal["system", "developer"] = Field(description="developer is taken as system")
    content: Content


class UserMessage(_Message):
    role: Literal["user"]
    content: Content


class AssistantMessage(_Message):
    role: Literal["assistant"]
    content: Optional[Content] = None
    tool_calls: Optional[list[ToolCallIn]] = Field(None, description="calls it made, shown to the model in the "
                                                   "tool-call format (README)")


class ToolMessage(_Message):
    role: Literal["tool"] = Field(description="shown to the model as a user turn holding "
                                  "<tool_response>...</tool_response>")
    content: Content
    tool_call_id: str = Field(description="the call this answers")


def _role(message) -> str | None:
    role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
    role = "system" if role == "developer" else role
    # a tag with "-" is left out of the field names errors.py writes: "messages.0.content", as before
    return f"role-{role}" if role in ("system", "user", "assistant", "tool") else None


ChatMessageIn = Annotated[Union[Annotated[SystemMessage, Tag("role-system")], Annotated[UserMessage, Tag("role-user")],
                                Annotated[AssistantMessage, Tag("role-assistant")],
                                Annotated[ToolMessage, Tag("role-tool")]],
                          Discriminator(_role, custom_error_type="invalid_role",
                                        custom_error_message="role: must be system, developer, user, assistant or "
                                        "tool")]


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True)
    name: FunctionName
    description: Optional[str] = None
    schema_: Optional[dict] = Field(None, alias="schema", description="the JSON schema the output must match "
                                    "(absent: any JSON object); one that does not compile is a 400")
    strict: Optional[bool] = Field(None, description="the schema is always enforced (as strict: true)")


class TextFormat(BaseModel):
    model_config = STRICT
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = STRICT
    type: Literal["json_object"]


class JsonSchemaFormat(BaseModel):
    model_config = STRICT
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[Union[TextFormat, JsonObjectFormat, JsonSchemaFormat], Field(discriminator="type")]


class FunctionSpec(BaseModel):
    model_config = STRICT
    name: FunctionName
    description: Optional[str] = None
    parameters: Optional[dict] = Field(None, description="JSON schema of the arguments (absent: any object)")
    strict: Optional[bool] = Field(None, description="the schema is always enforced (as strict: true)")


class ToolSpec(BaseModel):
    model_config = STRICT
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(BaseModel):
    model_config = STRICT
    name: FunctionName


class NamedToolChoice(BaseModel):
    model_config = STRICT
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Union[Literal["none", "auto", "required"], NamedToolChoice]


class ChatCompletionRequest(OpenAIFields):
    messages: list[ChatMessageIn] = Field(min_length=1, description="rendered with the model's chat template "
                                          "(400 `no_chat_template` if it has none)")
    max_tokens: Optional[NewTokens] = Field(None, description="deprecated name of max_completion_tokens")
    max_completion_tokens: Optional[NewTokens] = Field(None, description="1..min(max_new_tokens_limit, "
                                                       "context cap - 1)")
    logprobs: Optional[bool] = Field(None, description="return the log-probability of each generated token, "
                                     "from the target's raw logits (before temperature, top-k/top-p and any grammar "
                                     "mask), so equal whatever the speculator")
    top_logprobs: Optional[Integer(ge=0, le=MAX_TOP_LOGPROBS)] = Field(
        None, description="with logprobs: the likeliest tokens at each place, with theirs")
    response_format: Optional[ResponseFormat] = Field(
        None, description="json_object: the output is a JSON object; json_schema: it matches the schema (always "
        "enforced, compact JSON); both under a grammar mask, its forced tokens proposed for free")
    tools: Optional[Annotated[list[ToolSpec], Field(min_length=1, max_length=128)]] = Field(
        None, description="functions the model may call; listed in the system prompt in Hermes' format, each call "
        "generated under the grammar of its parameters and returned as `tool_calls`")
    tool_choice: Optional[ToolChoice] = Field(None, description="none, auto (default with tools), required, or "
                                              "a named function")
    parallel_tool_calls: Optional[bool] = Field(None, description="default true: one call or more; false: at "
                                                "most one")
    functions: Absent = Field(None, description="deprecated by OpenAI, not supported: use tools")
    function_call: Absent = Field(None, description="deprecated by OpenAI, not supported: use tool_choice")
    audio: Absent = Field(None, description=NOT_HONOURED)
    modalities: Optional[list[Literal["text"]]] = Field(None, description="text only")
    prediction: Absent = Field(None, description=NOT_HONOURED)
    reasoning_effort: Absent = Field(None, description=NOT_HONOURED)
    verbosity: Absent = Field(None, description=NOT_HONOURED)
    web_search_options: Absent = Field(None, description=NOT_HONOURED)

    def token_budget(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
