"""Structured prompt sets for `specops bench speculators --sets structured`: each prompt with its
constraint (our grammar, and for the peers a JSON schema between literal text), the checks that an
output is valid, and the figures of a constrained run (valid share, seconds per output, the
constrained peers' rows and ratios)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..engine.llm_engine import Engine
from .measure import Interleaved, Results, load_prompt_items, prompt_text


@dataclass
class StructuredSet:
    """A prompt set with an output constraint per prompt (prompts/structured.jsonl: a JSON
    schema, or tools with a tool_choice), and a check that an output is valid. For the peers:
    each prompt's constraint as a JSON schema between literal text (`peer_constraint`), and the
    check of their outputs (any JSON whitespace: their grammars allow it, ours writes compact JSON)."""
    prompts: list[list[int]]
    grammars: list[str]
    checks: list[Callable[[str], bool]]
    peer_constraints: list[dict]
    peer_checks: list[Callable[[str], bool]]


def load_structured_set(name: str, engine: Engine) -> StructuredSet:
    """Each item as the server would run it: a chat prompt under its schema's grammar, or with its
    tools listed (parallel_tool_calls false) under the grammar of one call."""
    from ..server.openai_schemas import ChatCompletionRequest
    from ..server.structured import tool_plan
    from ..server.validation import chat_prompt

    out = StructuredSet([], [], [], [], [])
    for item in load_prompt_items(name):
        constraint = peer_constraint(item)
        out.peer_constraints.append(constraint)
        out.peer_checks.append(lambda text, c=constraint: _valid_wrapped(text, c))
        if item["task"] == "json_schema":
            out.prompts.append(engine.tokenizer.encode(prompt_text(item, engine.tokenizer)))
            out.grammars.append(engine.grammars.json_schema(item["schema"]))
            out.checks.append(lambda text, schema=item["schema"]: _valid_json(text, schema))
            continue
        req = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": item["prompt"]}],
                                                    "tools": item["tools"], "tool_choice": item["tool_choice"],
                                                    "parallel_tool_calls": False})
        plan = tool_plan(req, engine.grammars)
        out.prompts.append(engine.tokenizer.encode(chat_prompt(plan.messages, engine)))
        out.grammars.append(plan.grammar)
        out.checks.append(lambda text, tools=item["tools"]: _valid_call(text, tools))
    return out


def peer_constraint(item: dict) -> dict:
    """What a peer is given for a structured item: {"json_schema", "prefix", "suffix"}. A JSON-schema
    item: its schema. A tool item (one call: tool_choice required or named, no parallel calls): the
    schema of one call that our tool grammar constrains to (tool_calls.call_schema over the functions
    offered, or the named one), between the call's literal tags `<tool_call>\n` and `\n</tool_call>`."""
    from ..server import tool_calls

    if item["task"] == "json_schema":
        return {"json_schema": item["schema"]}
    choice = item["tool_choice"]
    if choice not in ("required",) and not isinstance(choice, dict):
        raise ValueError(f"peers take one call per tool prompt (tool_choice required or named), not {choice!r}")
    functions = [t["function"] for t in item["tools"]
                 if not isinstance(choice, dict) or t["function"]["name"] == choice["function"]["name"]]
    schema = {k: v for k, v in tool_calls.call_schema(functions).items() if k != "x-guidance"}
    return {"json_schema": schema, "prefix": tool_calls.OPEN, "suffix": tool_calls.CLOSE}


def _valid_wrapped(text: str, constraint: dict) -> bool:
    """A peer's output: prefix, JSON valid against the schema (any whitespace), suffix."""
    prefix, suffix = constraint.get("prefix", ""), constraint.get("suffix", "")
    inner = text.strip()
    if not (inner.startswith(prefix.strip()) and inner.endswith(suffix.strip())):
        return False
    inner = inner[len(prefix.strip()):len(inner) - len(suffix.strip())]
    return _valid_json(inner, constraint["json_schema"])


def _valid_json(text: str, schema: dict) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def _valid_call(text: str, tools: list[dict]) -> bool:
    from ..server.tool_calls import ToolCallParser

    parser = ToolCallParser()
    parser.feed(text, final=True)
    content, calls = parser.result()
    params = {t["function"]["name"]: t["function"].get("parameters") or {"type": "object"} for t in tools}
    return content is None and len(calls) == 1 and all(
        c["function"]["name"] in params and _valid_json(c["function"]["arguments"], params[c["function"]["name"]])
        for c in calls)


def valid_fraction(results: Results, checks: list[Callable[[str], bool]]) -> dict[str, float]:
    """Per speculator: the share of outputs (every prompt, every repeat) that pass their check."""
    return {s: float(np.mean([checks[i](r.text) for i, runs in enumerate(per_prompt) for r in runs]))
            for s, per_prompt in results.items()}


def seconds_per_output(results: Results) -> dict[str, float]:
    """Per speculator: the median wall time of one whole output (a JSON, a tool call), prefill
    included; what a caller waits for a structured answer."""
    return {s: round(float(np.median([r.stats.total_s for runs in per_prompt for r in runs])), 4)
            for s, per_prompt in results.items()}


def constrained_peer_rows(run: Interleaved, checks: list[Callable[[str], bool]]) -> dict[str, dict]:
    """Per constrained peer: median tok/s (runs with tokens), median seconds per output, the share
    of outputs that pass their check, and how many runs failed (errors count as invalid)."""
    rows = {}
    for name, per_prompt in run.peer_outputs.items():
        flat = [(i, o) for i, outs in enumerate(per_prompt) for o in outs]
        ok = [o for _, o in flat if o.error is None]
        rows[name] = {"tok_s": round(float(np.median([o.tokens_per_second for o in ok if o.n_tokens] or [0.0])), 1),
                      "s_per_output": round(float(np.median([o.seconds for o in ok] or [0.0])), 4),
                      "valid": round(float(np.mean([o.error is None and checks[i](o.text) for i, o in flat])), 3),
                      "errors": len(flat) - len(ok),
                      "first_error": next((o.error for _, o in flat if o.error), None)}
        details = [o.detail for o in ok if o.detail]
        for key in sorted({k for d in details for k in d}):  # the peer's own timings, medians
            rows[name][f"median_{key}"] = round(float(np.median([d[key] for d in details if key in d])), 2)
    return rows


def peer_time_ratios(run: Interleaved, pairs: dict[str, list[str]]) -> dict[str, float]:
    """Median over (prompt, repeat) of the peer's seconds per output over ours (> 1: we answer
    sooner), for each of our speculators and its constrained peers; failed runs left out."""
    out = {}
    for mine, peers in pairs.items():
        for theirs in peers:
            if mine in run.results and theirs in run.peer_outputs:
                ratios = [o.seconds / r.stats.total_s
                          for rs, outs in zip(run.results[mine], run.peer_outputs[theirs])
                          for r, o in zip(rs, outs) if o.error is None and o.seconds > 0 and r.stats.total_s > 0]
                if ratios:
                    out[f"{mine}_vs_{theirs}"] = round(float(np.median(ratios)), 3)
    return out
