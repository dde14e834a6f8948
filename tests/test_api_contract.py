"""/openapi.json is the contract (docs/service.md, "The contract"): schemathesis, with every check,
finds no request the server answers otherwise than its schema says; and each limit on what a
request may cost, and each strict-type refusal, through a real HTTP client against a live server."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from server_harness import ROOT, ready_server

LIMIT = 8  # SPECOPS_MAX_NEW_TOKENS_LIMIT: keeps every generated case short
BODY_LIMIT = 64 * 1024  # SPECOPS_MAX_BODY_BYTES
SCHEMATHESIS_SEED = 1
# 413 is how a limit that depends on tokenization (no schema can state it) refuses a request the
# schema allows: prompt + token budget over the context cap. 400 is how an output constraint no
# schema can check is refused: a regex, grammar or JSON schema that does not compile, or two
# constraints at once. Both are documented on every operation.
SCHEMATHESIS_CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "413", "429", "5xx"]
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
"""


@pytest.fixture(scope="module")
def server():
    yield from ready_server({"SPECOPS_MAX_NEW_TOKENS_LIMIT": str(LIMIT), "SPECOPS_MAX_BODY_BYTES": str(BODY_LIMIT)})


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def model(server) -> dict:
    return server.health().json()["models"]


@pytest.fixture(scope="module")
def schema(client) -> dict:
    return client.get("/openapi.json").json()


def refused(r: httpx.Response, status: int, *fragments: str) -> dict:
    """The error object of a refusal with `status` whose message contains every fragment; never a
    trace or a path of the server's."""
    assert r.status_code == status, r.text
    error = r.json()["error"]
    for fragment in fragments:
        assert fragment in error["message"], error
    assert "Traceback" not in r.text and str(ROOT) not in r.text
    return error


# -- schemathesis: every operation, every check ----------------------------------------------
def test_schemathesis_finds_no_failure(server, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    cli = Path(sys.executable).parent / "schemathesis"
    command = [str(cli) if cli.exists() else shutil.which("schemathesis"), "--config-file", str(config), "--no-color",
               "run", server.base_url + "/openapi.json", "--checks", "all", "--workers", "1",
               "--seed", str(SCHEMATHESIS_SEED), "--generation-database", "none", "--max-failures", "20"]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-20000:]
    assert "Tested: 7" in out and " passed" in out, out[-3000:]


# -- the schema states the limits the server enforces ----------------------------------------
def _props(schema: dict, name: str) -> dict:
    return schema["components"]["schemas"][name]["properties"]


def _member(prop: dict, **match) -> dict:
    return next(m for m in prop.get("anyOf", [prop]) if all(m.get(k) == v for k, v in match.items()))


def test_schema_states_the_model_and_setting_limits(schema, model):
    cap = model["context_cap"]
    budget = min(LIMIT, cap - 1)
    assert _member(_props(schema, "GenerateRequest")["max_new_tokens"], type="integer")["maximum"] == budget
    assert _member(_props(schema, "CompletionRequest")["max_tokens"], type="integer")["maximum"] == budget
    chat = _props(schema, "ChatCompletionRequest")
    assert _member(chat["max_completion_tokens"], type="integer")["maximum"] == budget
    ids = _member(_props(schema, "CompletionRequest")["prompt"], **{"x-limit": "prompt_tokens"})
    assert ids["maxItems"] == cap - 1 and ids["minItems"] == 1
    assert ids["items"]["minimum"] == 0 and ids["items"]["maximum"] > 0  # the vocabulary's last id
    speculators = _member(_props(schema, "GenerateRequest")["speculator"], type="string")["enum"]
    assert set(speculators) == {"none", "ngram", "draft", "hybrid", "auto"}  # the pair has a draft model
    stop = _props(schema, "GenerateRequest")["stop"]
    assert _member(stop, type="array")["maxItems"] == 16 and _member(stop, type="string")["maxLength"] == 256
    assert _props(schema, "CompletionRequest")["n"]["maximum"] == 1
    assert _member(chat["logprobs"], type="boolean") and chat["top_logprobs"]["anyOf"][0]["maximum"] == 20
    for refused_field in ("logit_bias", "audio", "prediction", "functions"):  # not honoured: null or absent
        assert chat[refused_field]["type"] == "null" and "not supported" in chat[refused_field]["description"]
    assert schema["components"]["schemas"]["ChatCompletionRequest"]["additionalProperties"] is False
    for request in ("GenerateRequest", "CompletionRequest", "ChatCompletionRequest"):  # vLLM's extension field
        ignore_eos = _props(schema, request)["ignore_eos"]
        assert ignore_eos["type"] == "boolean" and ignore_eos["default"] is False and ignore_eos["description"]


@pytest.mark.parametrize("path", ["/generate", "/v1/completions", "/v1/chat/completions"])
def test_schema_documents_every_status(schema, path):
    responses = schema["paths"][path]["post"]["responses"]
    for status in ("400", "401", "413", "422", "429", "500", "503"):
        assert responses[status]["content"]["application/json"]["schema"] == \
            {"$ref": "#/components/schemas/ErrorResponse"}, status
    assert "Retry-After" in responses["429"]["headers"]
    assert set(responses["200"]["content"]) == {"application/json", "text/event-stream"}


def test_metrics_is_documented_as_prometheus_text(schema, client):
    assert list(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert client.get("/metrics").headers["content-type"].startswith("text/plain")


# -- limits on what a request may cost: refused before any work, naming the limit -------------
def test_body_over_the_limit_413(client):
    body = b'{"prompt": "' + b"x" * BODY_LIMIT + b'"}'
    error = refused(client.post("/generate", content=body), 413, f"the limit is {BODY_LIMIT} bytes (max_body_bytes)")
    assert error["code"] == "body_too_large"


def test_chunked_body_over_the_limit_413(client):
    def chunks():  # no Content-Length: the size is only known while reading
        yield b'{"prompt": "'
        for _ in range(BODY_LIMIT // 1024 + 1):
            yield b"x" * 1024
        yield b'"}'
    refused(client.post("/v1/completions", content=chunks()), 413, "max_body_bytes")


def test_chunked_body_under_the_limit_is_served(client):
    def chunks():
        yield b'{"prompt": "def f():\\n", '
        yield b'"max_new_tokens": 2}'
    r = client.post("/generate", content=chunks())
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1, r.text


def test_prompt_over_the_context_cap_413(client, model):
    cap = model["context_cap"]
    error = refused(client.post("/generate", json={"prompt": "hello " * (cap + 8), "max_new_tokens": 4}), 413,
                    f"the context cap is {cap} tokens", "shorten the prompt")
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    refused(client.post("/v1/completions", json={"prompt": [1] * cap, "max_tokens": 1}), 413,
            f"at most {cap - 1}")


def test_prompt_plus_budget_over_the_context_cap_413(client, model):
    cap = model["context_cap"]
    ids = [1] * (cap - 4)
    error = refused(client.post("/v1/completions", json={"prompt": ids, "max_tokens": 5}), 413,
                    f"prompt ({cap - 4} tokens) + max_tokens (5) = {cap + 1} tokens", f"the context cap is {cap}",
                    "lower max_tokens to at most 4")
    assert error["code"] == "context_length_exceeded" and error["param"] == "max_tokens"
    fits = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 4, "temperature": 0})
    assert fits.status_code == 200, fits.text


def test_default_budget_is_lowered_to_the_room_left(client, model):
    cap = model["context_cap"]
    r = client.post("/v1/completions", json={"prompt": [1] * (cap - 2), "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 2


@pytest.mark.parametrize("path,field", [("/generate", "max_new_tokens"), ("/v1/completions", "max_tokens"),
                                        ("/v1/chat/completions", "max_completion_tokens"),
                                        ("/v1/chat/completions", "max_tokens")])
def test_token_budget_over_the_limit_422(client, model, path, field):
    prompt = {"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {"prompt": "x"}
    extra = {"max_completion_tokens": 2} if field == "max_tokens" and "chat" in path else {}  # still checked
    error = refused(client.post(path, json={**prompt, **extra, field: LIMIT + 1}), 422,
                    f"{field}: must be in 1..{LIMIT}", f"max_new_tokens_limit {LIMIT}",
                    f"context cap {model['context_cap']}")
    assert error["param"] == field


@pytest.mark.parametrize("stop,fragment", [
    ([f"s{i}" for i in range(17)], "at most 16 items"),
    ("x" * 257, "at most 256 characters"),
    (["ok", "y" * 257], "at most 256 characters"),
    ([""], "at least 1 character"),
])
def test_stop_strings_count_and_length_422(client, stop, fragment):
    refused(client.post("/generate", json={"prompt": "x", "stop": stop}), 422, "stop", fragment)


# -- strict types: no bool, number or string turned into another -----------------------------
STRICT_CASES = [
    ("/v1/completions", {"prompt": [False]}, "prompt"),
    ("/v1/completions", {"prompt": [1.5]}, "prompt"),
    ("/v1/completions", {"prompt": 42}, "prompt"),
    ("/v1/completions", {"prompt": "x", "max_tokens": "4"}, "max_tokens: Input should be a valid integer"),
    ("/v1/completions", {"prompt": "x", "max_tokens": True}, "max_tokens: Input should be a valid integer"),
    ("/v1/completions", {"prompt": "x", "logprobs": True}, "logprobs"),
    ("/v1/completions", {"prompt": "x", "logprobs": 6}, "logprobs: Input should be less than or equal to 5"),
    ("/v1/completions", {"prompt": "x", "echo": 0}, "echo"),
    ("/v1/completions", {"prompt": "x", "n": True}, "n: Input should be a valid integer"),
    ("/v1/completions", {"prompt": "x", "n": 2}, "n: Input should be less than or equal to 1"),
    ("/v1/completions", {"prompt": "x", "stream": 1}, "stream: Input should be a valid boolean"),
    ("/v1/completions", {"prompt": "x", "stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": 0}, "logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21},
     "top_logprobs: Input should be less than or equal to 20"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": "0.5"},
     "temperature: Input should be a valid number"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": True},
     "temperature: Input should be a valid number"),
    ("/generate", {"prompt": "x", "top_k": False}, "top_k: Input should be a valid integer"),
    ("/generate", {"prompt": "x", "seed": "1"}, "seed: Input should be a valid integer"),
    ("/generate", {"prompt": "x", "k_draft": 2.5}, "k_draft: Input should be a valid integer"),
    ("/generate", {"prompt": "x", "stream": "true"}, "stream: Input should be a valid boolean"),
    ("/generate", {"prompt": ["x"]}, "prompt: Input should be a valid string"),
    ("/generate", {"prompt": "x", "ignore_eos": 1}, "ignore_eos: Input should be a valid boolean"),
    ("/v1/completions", {"prompt": "x", "ignore_eos": "true"}, "ignore_eos: Input should be a valid boolean"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "ignore_eos": None},
     "ignore_eos: Input should be a valid boolean"),
]


@pytest.mark.parametrize("path,body,fragment", STRICT_CASES)
def test_no_coercion_422(client, path, body, fragment):
    error = refused(client.post(path, json=body), 422, fragment)
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_value"


def test_a_whole_number_is_an_integer(client):
    # JSON has one number type (and JSON Schema's "integer" admits 4.0): only the type is strict
    r = client.post("/v1/completions", json={"prompt": [1, 2.0], "max_tokens": 2.0, "n": 1.0, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 2, r.text


def test_a_lone_surrogate_is_not_text_422(client):
    # valid JSON, but not Unicode: the tokenizer could not take it (it was a 500 once)
    refused(client.post("/generate", content=b'{"prompt": "a\\ud800b", "max_new_tokens": 2}'), 422,
            "prompt: Input should be a valid string")


def test_malformed_json_400(client):
    error = refused(client.post("/v1/chat/completions", content=b"\x00"), 400, "malformed JSON body")
    assert error["code"] == "invalid_json"
