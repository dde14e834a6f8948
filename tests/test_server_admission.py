"""Admission on the real service: a one-slot queue gives 429 + Retry-After when full and 503 +
Retry-After past the queue timeout; the bearer key guards all but health and metrics."""
from __future__ import annotations

import concurrent.futures as cf
import time

import httpx
import openai
import pytest

from server_harness import long_prompt, ready_server

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUEUE_TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def server():
    yield from ready_server({"SPECOPS_QUEUE_SIZE": "1", "SPECOPS_QUEUE_TIMEOUT_S": str(QUEUE_TIMEOUT_S),
                           "SPECOPS_API_KEY": KEY, "SPECOPS_DRAFT_MODEL": "none"})


def _queue_depth(base_url: str) -> int:
    return httpx.get(base_url + "/health", timeout=5).json()["queue_depth"]


def test_full_queue_429_then_queue_timeout_503(server):
    base = server.base_url
    cap = server.health().json()["models"]["context_cap"]  # the prompt needs room too (else 413)
    body = {"prompt": long_prompt(base, headers=AUTH), "max_new_tokens": min(2048, cap - 64), "speculator": "none",
            "stream": True}
    with cf.ThreadPoolExecutor(1) as pool, httpx.Client(timeout=60, headers=AUTH) as c:
        with c.stream("POST", base + "/generate", json=body) as running:
            assert running.status_code == 200
            lines = running.iter_lines()  # kept: a dropped iterator closes the response
            next(lines)  # it has started: the engine is busy
            waiting = pool.submit(c.post, base + "/generate", json={"prompt": "x", "max_new_tokens": 4})
            deadline = time.monotonic() + 10
            while _queue_depth(base) < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            full = c.post(base + "/generate", json={"prompt": "x", "max_new_tokens": 4})
            assert full.status_code == 429, full.text
            assert int(full.headers["Retry-After"]) >= 1
            assert full.json()["error"]["code"] == "queue_full"
            timed_out = waiting.result(timeout=QUEUE_TIMEOUT_S + 10)
            assert timed_out.status_code == 503, timed_out.text
            assert int(timed_out.headers["Retry-After"]) >= 1
            assert timed_out.json()["error"]["code"] == "queue_timeout"
    # the long stream was closed above, which cancels it: the server is free again
    deadline = time.monotonic() + 10
    while httpx.get(base + "/health").json()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert httpx.post(base + "/generate", headers=AUTH, json={"prompt": "x", "max_new_tokens": 4}).status_code == 200


@pytest.mark.parametrize("method,path", [("POST", "/generate"), ("GET", "/v1/models"), ("POST", "/v1/completions"),
                                         ("POST", "/v1/chat/completions"), ("GET", "/docs"), ("GET", "/nowhere")])
@pytest.mark.parametrize("header", [None, "Bearer wrong", KEY])
def test_api_key_required(server, method, path, header):
    headers = {"Authorization": header} if header else {}
    r = httpx.request(method, server.base_url + path, headers=headers, json={"prompt": "x"})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert r.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("path", ["/health", "/health/live", "/metrics"])
def test_health_and_metrics_need_no_key(server, path):
    assert httpx.get(server.base_url + path).status_code == 200


def test_openai_client_with_and_without_key(server):
    good = openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0)
    assert good.models.list().data[0].id == "specops"
    bad = openai.OpenAI(base_url=server.base_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_draft_speculator_without_draft_model_is_refused(server):
    r = httpx.post(server.base_url + "/generate", headers=AUTH,
                   json={"prompt": "x", "max_new_tokens": 4, "speculator": "draft"})
    assert r.status_code == 422 and "draft model" in r.json()["error"]["message"]


def test_schema_states_what_this_server_takes(server):
    """No draft model: `draft` and `hybrid` are not in the speculator enum; every path but health
    and metrics declares the bearer key."""
    schema = httpx.get(server.base_url + "/openapi.json", headers=AUTH).json()
    speculator = schema["components"]["schemas"]["GenerateRequest"]["properties"]["speculator"]["anyOf"][0]
    assert speculator["enum"] == ["none", "ngram", "auto"]
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            assert ("security" in operation) == (path not in ("/health", "/health/live", "/metrics")), path


def test_the_key_is_never_logged(server):
    for header in (f"Bearer {KEY}", "Bearer not-the-key-4711"):
        httpx.post(server.base_url + "/generate", headers={"Authorization": header},
                   json={"prompt": "x", "max_new_tokens": 2})
    log = server.log()
    assert KEY not in log and "not-the-key-4711" not in log
