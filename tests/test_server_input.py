"""Every invalid input gets its documented 4xx, with a message naming the field and the limit
(docs/service.md, "Errors"), and the server keeps serving afterwards."""
from __future__ import annotations

import httpx
import pytest

from server_harness import ready_server

LIMIT = 64  # SPECOPS_MAX_NEW_TOKENS_LIMIT for this server


@pytest.fixture(scope="module")
def server():
    yield from ready_server({"SPECOPS_MAX_NEW_TOKENS_LIMIT": str(LIMIT)})


@pytest.fixture(scope="module")
def cap(server) -> int:
    return server.health().json()["models"]["context_cap"]


def post(server, path: str, body) -> httpx.Response:
    kwargs = {"content": body} if isinstance(body, (str, bytes)) else {"json": body}
    return httpx.post(server.base_url + path, timeout=30, **kwargs)


GENERATE_CASES = [
    # (body, status, text the message must contain)
    ({"prompt": ""}, 422, "prompt: String should have at least 1 character"),
    ({"max_new_tokens": 8}, 422, "prompt: Field required"),
    ({"prompt": "x", "max_new_tokens": 0}, 422, "max_new_tokens: Input should be greater than or equal to 1"),
    ({"prompt": "x", "max_new_tokens": LIMIT + 1}, 422, "max_new_tokens: must be in 1..64"),
    ({"prompt": "x", "k_draft": 17}, 422, "k_draft: Input should be less than or equal to 16"),
    ({"prompt": "x", "k_draft": -1}, 422, "k_draft: Input should be greater than or equal to 0"),
    ({"prompt": "x", "speculator": "magic"}, 422, "speculator: Input should be 'none', 'ngram', 'draft', 'hybrid'"),
    ({"prompt": "x", "max_new_tokens": "8"}, 422, "max_new_tokens: Input should be a valid integer"),
    ({"prompt": 42}, 422, "prompt: Input should be a valid string"),
    ({"prompt": "x", "temperature": 2.5}, 422, "temperature: Input should be less than or equal to 2"),
    ({"prompt": "x", "top_p": 0}, 422, "top_p: Input should be greater than 0"),
    ({"prompt": "x", "stop": [""]}, 422, "stop.0: String should have at least 1 character"),
    ({"prompt": "x", "max_tokens": 8}, 400, "max_tokens: unknown field, not supported here"),
    ('{"prompt": "x", ', 400, "malformed JSON body"),
    ("[1, 2]", 422, "Input should be a valid dictionary"),
]


@pytest.mark.parametrize("body,status,message", GENERATE_CASES)
def test_generate_rejects(server, body, status, message):
    r = post(server, "/generate", body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"


def test_prompt_over_the_context_cap(server, cap):
    r = post(server, "/generate", {"prompt": "hello " * (cap + 8), "max_new_tokens": 4})
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded" and f"the context cap is {cap}" in error["message"]


OPENAI_CASES = [
    ("/v1/completions", {"model": "specops", "prompt": "x", "max_tokens": LIMIT + 1}, 422,
     "max_tokens: must be in 1..64"),
    ("/v1/completions", {"model": "specops", "prompt": "x", "n": 2}, 422, "n: Input should be less than or equal to 1"),
    ("/v1/completions", {"model": "specops", "prompt": ["a", "b"]}, 422, "List should have at most 1 item"),
    ("/v1/completions", {"model": "other", "prompt": "x"}, 404, "'other' does not exist"),
    ("/v1/completions", {"model": "specops"}, 422, "prompt: Field required"),
    ("/v1/chat/completions", {"model": "specops", "messages": []}, 422, "messages: List should have at least 1 item"),
    ("/v1/chat/completions", {"model": "specops", "messages": [{"role": "robot", "content": "x"}]}, 422,
     "messages.0: role: must be system, developer, user, assistant or tool"),
    ("/v1/chat/completions", {"model": "specops", "messages": [{"role": "user", "content": "x"}],
                              "max_completion_tokens": 0}, 422,
     "max_completion_tokens: Input should be greater than or equal to 1"),
    ("/v1/chat/completions", "not json", 400, "malformed JSON body"),
]


@pytest.mark.parametrize("path,body,status,message", OPENAI_CASES)
def test_openai_rejects(server, path, body, status, message):
    r = post(server, path, body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]["message"]


def test_unknown_path_and_method(server):
    assert httpx.get(server.base_url + "/nowhere").status_code == 404
    assert httpx.get(server.base_url + "/generate").status_code == 405


def test_still_serving_after_bad_input(server):
    r = post(server, "/generate", {"prompt": "def f():\n", "max_new_tokens": 4})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
