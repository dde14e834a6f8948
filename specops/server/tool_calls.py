"""Tool calls: the prompt that shows the model its tools, the grammar its calls are generated
under, and the parser that turns the generated text into OpenAI `tool_calls` (whole or streamed).

The format is Hermes' (NousResearch; Qwen2.5's chat template uses it too), which chat models
are trained on and any chat template can carry as text. The tools are listed in a system
message; each call is written as

    <tool_call>
    {"name":"get_weather","arguments":{"city":"Paris"}}
    </tool_call>

with compact JSON, the name first (the grammar makes it so), calls separated by a newline.
Earlier turns are written the same way: an assistant's `tool_calls` as such blocks, a `tool`
message as a user turn holding `<tool_response>...</tool_response>`.

tool_choice: `none` generates text (the tools stay listed, as in OpenAI); `required` one call or
more; a named function one call to it; `auto` either text (not starting with "<") or calls.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from ..runtime.tokenizer import ChatMessage

OPEN, CLOSE = "<tool_call>\n", "\n</tool_call>"
HEADER = re.compile(r'<tool_call>\n\{"name":("(?:[^"\\]|\\.)*"),"arguments":')
END = "}" + CLOSE  # the call object's closing brace, then the closing tag

SYSTEM_PROMPT = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def system_prompt(tools: list[dict]) -> str:
    """tools: OpenAI tool objects ({"type": "function", "function": {...}})."""
    return SYSTEM_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))


def call_block(name: str, arguments: str) -> str:
    """One call as the model writes it (`arguments`: the JSON text of the arguments)."""
    return f'{OPEN}{{"name":{json.dumps(name, ensure_ascii=False)},"arguments":{arguments}}}{CLOSE}'


def with_tools(messages: list[ChatMessage], tools: list[dict]) -> list[ChatMessage]:
    """The conversation with the tools listed in its system message (added if it has none)."""
    listing = system_prompt(tools)
    if messages and messages[0].role == "system":
        return [ChatMessage("system", f"{messages[0].content}\n\n{listing}"), *messages[1:]]
    return [ChatMessage("system", listing), *messages]


def tool_response(content: str) -> ChatMessage:
    return ChatMessage("user", f"<tool_response>\n{content}\n</tool_response>")


def call_schema(functions: list[dict]) -> dict:
    """JSON schema of one call: {"name": one of the functions, "arguments": its parameters}."""
    options = [{"type": "object", "properties": {"name": {"const": f["name"]},
                                                 "arguments": f.get("parameters") or {"type": "object"}},
                "required": ["name", "arguments"], "additionalProperties": False} for f in functions]
    return {"anyOf": options, "x-guidance": {"whitespace_flexible": False}}


def lark_grammar(functions: list[dict], choice: str, parallel: bool) -> str:
    """The grammar of the answer: choice "auto" (text or calls) or "required" (calls), over
    `functions` (already narrowed to the named one for a named choice)."""
    calls = 'call ("\\n" call)*' if parallel else "call"
    rules = [f"calls: {calls}", f'call: {json.dumps(OPEN)} args {json.dumps(CLOSE)}',
             f"args: %json {json.dumps(call_schema(functions), ensure_ascii=False)}"]
    if choice == "auto":
        return "\n".join(["start: TEXT | calls", *rules, r"TEXT: /[^<](.|\n)*/"]) + "\n"
    return "\n".join(["start: calls", *rules]) + "\n"


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str = ""  # JSON text, as OpenAI returns it
    closed: bool = False


@dataclass
class ToolCallParser:
    """Reads the generated text as it grows: text that does not start with "<" is content; else
    a sequence of call blocks. `feed` returns OpenAI chat deltas ({"content": ...} or
    {"tool_calls": [...]}); an argument's text is streamed as it comes, holding back what may be
    the start of its call's end."""
    text: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    _content_sent: int = 0
    _args_sent: list[int] = field(default_factory=list)
    _scan: int = 0  # where the next call block starts

    @property
    def is_content(self) -> bool:
        return bool(self.text) and not self.text.startswith("<")

    def feed(self, text: str, final: bool = False) -> list[dict]:
        self.text += text
        if not self.text:
            return []
        if self.is_content:
            delta, self._content_sent = self.text[self._content_sent:], len(self.text)
            return [{"content": delta}] if delta else []
        return self._call_deltas(final)

    def _call_deltas(self, final: bool) -> list[dict]:
        deltas = []
        while True:
            if not self.calls or self.calls[-1].closed:
                start = self.text.find("<", self._scan)
                header = HEADER.match(self.text, start) if start >= 0 else None
                if header is None:
                    return deltas
                call = ToolCall(f"call_{uuid.uuid4().hex[:24]}", json.loads(header.group(1)))
                self.calls.append(call)
                self._args_sent.append(header.end())
                deltas.append(self._delta(len(self.calls) - 1, id=call.id, type="function",
                                          function={"name": call.name, "arguments": ""}))
            i, call = len(self.calls) - 1, self.calls[-1]
            end = self.text.find(END, self._args_sent[i])
            stop = end if end >= 0 else (len(self.text) if final else max(len(self.text) - len(END),
                                                                           self._args_sent[i]))
            if stop > self._args_sent[i]:
                piece = self.text[self._args_sent[i]:stop]
                call.arguments += piece
                self._args_sent[i] = stop
                deltas.append(self._delta(i, function={"arguments": piece}))
            if end < 0:
                return deltas
            call.closed = True
            self._scan = end + len(END)

    @staticmethod
    def _delta(index: int, **fields) -> dict:
        return {"tool_calls": [{"index": index, **fields}]}

    def result(self) -> tuple[str | None, list[dict]]:
        """(content, OpenAI tool_calls) of the whole text fed so far."""
        if self.is_content or not self.calls:
            return self.text, []
        return None, [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                      for c in self.calls]
