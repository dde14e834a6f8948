"""A request's output constraint -> a checked llguidance grammar, or a 400 naming the field.

At most one constraint per request: `regex`, `grammar` (extensions), `response_format`
(json_object / json_schema) or active `tools`. The engine (specops/engine/constraint.py) then
masks every verified position by it. Compiling and checking a grammar takes up to seconds for a
large schema: the routes call these functions through `compiling`, on one thread of their own,
never on the event loop (one thread: compiles queue behind each other, and the process's thread
count stays put, where a pool's idle workers linger).
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..engine.constraint import GrammarError, Grammars
from ..runtime.tokenizer import ChatMessage
from . import tool_calls
from .errors import InvalidRequest
from .schemas import ConstraintFields


def _refuse(param: str, message: str, code: str = "invalid_grammar") -> InvalidRequest:
    return InvalidRequest(f"{param}: {message}", param=param, code=code, status=400)


def _compile(param: str, build):
    try:
        return build()
    except GrammarError as err:
        raise _refuse(param, f"does not compile: {err}") from None


def only_one(given: dict[str, bool]) -> None:
    named = [name for name, on in given.items() if on]
    if len(named) > 1:
        raise _refuse(named[1], f"cannot be combined with {named[0]} (one output constraint per request)",
                      code="invalid_value")


def constraint_grammar(req: ConstraintFields, grammars: Grammars, response_format=None) -> str | None:
    """The grammar of `regex`, `grammar` or an OpenAI `response_format` (text: none)."""
    json_format = response_format is not None and response_format.type != "text"
    only_one({"response_format": json_format, "regex": req.regex is not None, "grammar": req.grammar is not None})
    if req.regex is not None:
        return _compile("regex", lambda: grammars.regex(req.regex))
    if req.grammar is not None:
        return _compile("grammar", lambda: grammars.grammar(req.grammar))
    if not json_format:
        return None
    schema = response_format.json_schema.schema_ if response_format.type == "json_schema" else None
    param = "response_format.json_schema.schema" if schema is not None else "response_format"
    return _compile(param, lambda: grammars.json_schema(schema))


@dataclass
class ToolPlan:
    """What active tools change in a chat request: the conversation the model sees, and the
    grammar of its answer (None: free text, for tool_choice none)."""
    messages: list[ChatMessage]
    grammar: str | None
    active: bool  # the answer is parsed for tool calls


def conversation(req) -> list[ChatMessage]:
    """The request's messages as the chat template renders them (roles it knows; earlier tool
    calls and results in the tool-call format)."""
    out = []
    for m in req.messages:
        if m.role == "tool":
            out.append(tool_calls.tool_response(m.text()))
        elif m.role == "assistant" and getattr(m, "tool_calls", None):
            blocks = [tool_calls.call_block(c.function.name, c.function.arguments) for c in m.tool_calls]
            out.append(ChatMessage("assistant", "\n".join(filter(None, [m.text(), *blocks]))))
        else:
            out.append(ChatMessage("system" if m.role == "developer" else m.role, m.text()))
    return out


def tool_plan(req, grammars: Grammars) -> ToolPlan:
    messages = conversation(req)
    if not req.tools:
        if req.tool_choice is not None or req.parallel_tool_calls is not None:
            field = "tool_choice" if req.tool_choice is not None else "parallel_tool_calls"
            raise _refuse(field, "needs tools", code="invalid_value")
        return ToolPlan(messages, None, False)
    functions = [t.function.model_dump(exclude_none=True) for t in req.tools]
    names = [f["name"] for f in functions]
    if len(set(names)) < len(names):
        raise _refuse("tools", "function names must be unique", code="invalid_value")
    listed = tool_calls.with_tools(messages, [t.model_dump(exclude_none=True) for t in req.tools])
    choice = req.tool_choice or "auto"
    if choice == "none":
        return ToolPlan(listed, None, False)
    if not isinstance(choice, str):
        functions = [f for f in functions if f["name"] == choice.function.name]
        if not functions:
            raise _refuse("tool_choice", f"names {choice.function.name!r}, which is not among the tools",
                          code="invalid_value")
        choice = "required"
    for f in functions:  # each function's parameters must compile on their own (a clear message)
        if f.get("parameters") is not None:
            param = f"tools.{names.index(f['name'])}.function.parameters"
            _compile(param, lambda f=f: grammars.json_schema(f["parameters"]))
    named = not isinstance(req.tool_choice or "auto", str)  # a named function: one call to it
    lark = tool_calls.lark_grammar(functions, choice, req.parallel_tool_calls is not False and not named)
    return ToolPlan(listed, _compile("tools", lambda: grammars.grammar(lark)), True)


def chat_constraint(req, grammars: Grammars) -> tuple[ToolPlan, str | None]:
    """A chat request's tool plan and the grammar of its answer: its tools', or else that of
    `regex`, `grammar` or `response_format` (one of them at most)."""
    plan = tool_plan(req, grammars)
    only_one({"tools": plan.grammar is not None, "response_format": req.response_format is not None
              and req.response_format.type != "text", "regex": req.regex is not None,
              "grammar": req.grammar is not None})
    return plan, plan.grammar or constraint_grammar(req, grammars, req.response_format)


_COMPILER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="specops-grammar")


async def compiling(fn, *args):
    """fn(*args) on the grammar thread (constraint_grammar, chat_constraint): the event loop keeps
    serving /health and the streams while a large schema compiles."""
    return await asyncio.get_running_loop().run_in_executor(_COMPILER, fn, *args)
