"""Structured output, tools and logprobs over HTTP, on the committed small pair, through the
official `openai` client: response_format json_schema / json_object, the regex and grammar
extensions, tools with tool_choice required / named / auto / none (whole and streamed),
logprobs with top_logprobs on both /v1 endpoints (whole and streamed), and the refusals: a
schema, grammar or tool that does not compile, fields that cannot go together, and fields we do
not honour are a 400 naming the problem. (The small target writes nonsense: these tests check
shapes and grammars, not answers; the default model's 20 schemas are in test_real_model.py.)"""
from __future__ import annotations

import json
import re

import httpx
import jsonschema
import openai
import pytest

from specops.server.tool_calls import ToolCallParser, call_block

from server_harness import ready_server

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                           "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 2}},
          "required": ["name", "age", "pets"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
SEARCH = {"type": "function", "function": {
    "name": "search", "parameters": {"type": "object", "properties": {"query": {"type": "string", "maxLength": 20}},
                                     "required": ["query"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def server():
    # (a body limit above the slow-compile test's 1.8 MB schema)
    yield from ready_server({"SPECOPS_MAX_BATCH": "2", "SPECOPS_MAX_BODY_BYTES": str(4 << 20)})


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        yield c


def chat(oai, **kw):
    kw.setdefault("temperature", 0)
    return oai.chat.completions.create(model="specops", messages=kw.pop("messages", ASK), **kw)


# -- response_format and the extensions --------------------------------------------------------
def test_json_schema_output_parses_and_validates(oai):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    for speculator in ("none", "auto"):
        r = chat(oai, response_format=fmt, max_tokens=64, extra_body={"speculator": speculator})
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
        assert r.model_extra["specops"]["speculator"] == speculator


def test_json_object_output_is_an_object(oai):
    r = chat(oai, response_format={"type": "json_object"}, max_tokens=48, temperature=0.8, seed=3)
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:  # the budget ran out first: still an object's beginning
        assert r.choices[0].message.content.startswith("{")


def test_regex_and_grammar_on_every_endpoint(oai, client):
    r = oai.completions.create(model="specops", prompt="The year:", max_tokens=8, temperature=0,
                               extra_body={"regex": "(19|20)[0-9]{2}"})
    assert re.fullmatch("(19|20)[0-9]{2}", r.choices[0].text)
    g = client.post("/generate", json={"prompt": "Pick:", "grammar": 'root ::= "red" | "green" | "blue"'}).json()
    assert g["generated_text"] in ("red", "green", "blue") and g["finish_reason"] == "stop"
    forced = client.post("/generate", json={"prompt": "Say:", "regex": "Answer:\n(c|d)", "speculator": "ngram"}).json()
    # forced tokens are offered every round; in a batch the round's width (the cost model's choice) may
    # leave them out, so their count is reported, not assumed (test_constraint.py counts them alone)
    assert forced["generated_text"] in ("Answer:\nc", "Answer:\nd")
    assert 0 <= forced["forced_tokens"] <= forced["accepted_tokens"] <= forced["usage"]["completion_tokens"]
    lark = chat(oai, max_tokens=8, extra_body={"grammar": 'start: "yes" | "no"'})
    assert lark.choices[0].message.content in ("yes", "no")


# -- tools ------------------------------------------------------------------------------------
def test_tool_choice_required_returns_parsed_tool_calls(oai):
    r = chat(oai, tools=[WEATHER, SEARCH], tool_choice="required", max_tokens=64, parallel_tool_calls=False)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in ("get_weather", "search")
    params = (WEATHER if call.function.name == "get_weather" else SEARCH)["function"]["parameters"]
    jsonschema.validate(json.loads(call.function.arguments), params)


def test_a_named_tool_choice_calls_that_function_once(oai):
    r = chat(oai, tools=[WEATHER, SEARCH], tool_choice={"type": "function", "function": {"name": "search"}},
             max_tokens=64)
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "search" and set(json.loads(call.function.arguments)) == {"query"}


def test_streamed_tool_calls_add_up_to_the_whole_answer(oai):
    kw = dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=64)
    whole = chat(oai, **kw).choices[0].message.tool_calls[0]
    chunks = list(chat(oai, stream=True, **kw))
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].function.name == "get_weather" and all(d.index == 0 for d in deltas)
    assert len(deltas) > 2  # the arguments come in pieces
    assert "".join(d.function.arguments or "" for d in deltas) == whole.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_and_auto(oai):
    none = chat(oai, tools=[WEATHER], tool_choice="none", max_tokens=8)
    assert none.choices[0].message.tool_calls is None and isinstance(none.choices[0].message.content, str)
    auto = chat(oai, tools=[WEATHER], max_tokens=48)  # text, or calls: never a broken call
    message = auto.choices[0].message
    assert message.tool_calls or not message.content.startswith("<")


def test_earlier_calls_and_results_go_back_to_the_model(oai):
    messages = [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, rain"}]
    r = chat(oai, messages=messages, tools=[WEATHER], tool_choice="none", max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_the_parser_streams_arguments_and_holds_back_the_end():
    text = call_block("f", '{"a":"}\\n"}') + "\n" + call_block("g", "{}")
    parser, deltas = ToolCallParser(), []
    for i in range(len(text)):
        deltas += parser.feed(text[i])
    deltas += parser.feed("", final=True)
    content, calls = parser.result()
    assert content is None and [c["function"] for c in calls] == [{"name": "f", "arguments": '{"a":"}\\n"}'},
                                                                   {"name": "g", "arguments": "{}"}]
    args = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas if d["tool_calls"][0]["index"] == 0)
    assert args == '{"a":"}\\n"}'
    assert ToolCallParser().feed("Hello") == [{"content": "Hello"}]


# -- logprobs -----------------------------------------------------------------------------------
def test_chat_logprobs_with_top_logprobs_whole_and_streamed(oai):
    kw = dict(logprobs=True, top_logprobs=3, max_tokens=8, response_format={"type": "json_object"})
    whole = chat(oai, **kw)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens
    assert "".join(t.token for t in content) == whole.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3 and bytes(t.bytes).decode() == t.token
        assert t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob >= t.logprob - 30
    # before the mask: the grammar's "{" is not the model's own favourite after this prompt
    assert content[0].token == "{" and content[0].top_logprobs[0].logprob > content[0].logprob
    streamed = [t for c in chat(oai, stream=True, **kw) if c.choices and c.choices[0].logprobs
                for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in content], abs=1e-6)


def test_completion_logprobs_whole_and_streamed(oai):
    kw = dict(model="specops", prompt="Once upon a time", max_tokens=6, temperature=0, logprobs=2)
    whole = oai.completions.create(**kw).choices[0]
    lp = whole.logprobs
    assert "".join(lp.tokens) == whole.text and len(lp.token_logprobs) == len(lp.tokens) == 6
    assert all(len(top) <= 2 for top in lp.top_logprobs) and lp.text_offset[0] == 0
    streamed = [c.choices[0].logprobs for c in oai.completions.create(stream=True, **kw) if c.choices[0].logprobs]
    assert [t for s in streamed for t in s.tokens] == lp.tokens


# -- refusals --------------------------------------------------------------------------------
REFUSALS = [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}},
     "response_format.json_schema.schema", "does not compile"),
    ({"regex": "[a-"}, "regex", "does not compile"),
    ({"grammar": "start: missing_rule"}, "grammar", "missing_rule"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                           "properties": {"a": {"type": 7}}}}}]},
     "tools.0.function.parameters", "does not compile"),
    ({"tools": [WEATHER, WEATHER]}, "tools", "unique"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "nope"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"regex": "a", "response_format": {"type": "json_object"}}, "regex", "cannot be combined"),
    ({"top_logprobs": 2}, "top_logprobs", "logprobs: true"),
    ({"regex": "a+", "ignore_eos": True}, "ignore_eos", "constraint"),
    ({"logit_bias": {"5": 1}}, "logit_bias", "not supported"),
    ({"functions": [{"name": "f"}]}, "functions", "not supported"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction", "not supported"),
    ({"store": True}, "store", "not supported"),
    ({"max_token": 5}, "max_token", "unknown field"),
]


@pytest.mark.parametrize("extra,param,fragment", REFUSALS)
def test_what_we_cannot_honour_is_a_400_naming_it(client, extra, param, fragment):
    r = client.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 4, **extra})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and fragment in error["message"], error


def test_completions_refuse_what_they_cannot_honour(client):
    for extra, param in (({"echo": True}, "echo"), ({"suffix": "x"}, "suffix"), ({"best_of": 2}, "best_of")):
        r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, **extra})
        assert r.status_code in (400, 422) and r.json()["error"]["param"] == param, r.text
    assert client.post("/v1/completions", json={"prompt": "x", "echo": True}).status_code == 400


def test_the_openai_client_raises_on_a_bad_schema(oai):
    with pytest.raises(openai.BadRequestError, match="does not compile"):
        chat(oai, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}})


# -- a slow compile runs beside the event loop ---------------------------------------------------
def test_a_slow_compile_does_not_stall_health(server, engine):
    """A schema whose grammar takes tenths of a second to compile and check (a 60,000-value enum, near
    llguidance's lexer limit: 0.26-0.36 s on a quiet 2-core machine, 1.8 s on a loaded one): while
    one request compiles it, /health keeps answering within half that time (the compile runs on
    the grammar thread; on the event loop a /health call would wait for the whole compile)."""
    import threading
    import time

    schema = {"enum": [f"item number {i} with text" for i in range(60_000)]}
    start = time.perf_counter()
    engine.grammars.json_schema(schema)  # the same compile and check, timed here (the small pair's tokenizer)
    compile_s = time.perf_counter() - start
    assert compile_s > 0.15, f"the schema compiles in {compile_s:.2f} s: too fast to show a stall"
    body = {"model": "specops", "messages": ASK, "max_tokens": 1,
            "response_format": {"type": "json_schema", "json_schema": {"name": "big", "schema": schema}}}
    answer = {}
    request = threading.Thread(target=lambda: answer.update(
        r=httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=120)))
    gaps = []
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        client.get("/health")
        request.start()
        while request.is_alive():
            t = time.perf_counter()
            assert client.get("/health").status_code == 200
            gaps.append(time.perf_counter() - t)
        request.join()
    assert answer["r"].status_code == 200, answer["r"].text
    assert len(gaps) > 3 and max(gaps) < compile_s / 2, (
        f"/health took up to {max(gaps):.2f} s while a {compile_s:.2f} s compile ran ({len(gaps)} polls)")
