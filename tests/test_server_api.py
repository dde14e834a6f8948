"""The real service over HTTP (uvicorn subprocess, default settings): endpoint schemas, the
openai client, metrics, identical concurrent requests, disconnects, invalid input."""
from __future__ import annotations

import concurrent.futures as cf
import json
import threading
import time

import httpx
import openai
import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from server_harness import long_prompt, metric, ready_server, scrape

PROMPT = "def read_config(path):\n"


@pytest.fixture(scope="module")
def server():
    yield from ready_server()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def generate(client, **body) -> dict:
    r = client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 16, **body})
    assert r.status_code == 200, r.text
    return r.json()


def sse_events(lines):
    """The data of each SSE event, lazily (a test may stop reading mid-stream)."""
    return (line[len("data: "):] for line in lines if line.startswith("data: "))


# -- schemas -------------------------------------------------------------------------------
def test_health_and_liveness(client):
    live = client.get("/health/live")
    assert live.status_code == 200 and live.json()["status"] == "alive"
    body = client.get("/health").json()
    assert body["status"] == "ready" and body["reason"] is None
    assert body["models"]["context_cap"] > 0 and body["queue_depth"] == 0 and body["in_flight"] == 0
    kernel = body["models"]["kernel"]  # the small target is a builder int4 export: tiled wherever it can run
    assert kernel["target"] in ("tiled", "stock") and (kernel["target"] == "tiled") == (kernel["note"] is None)


def test_generate_schema(client):
    body = generate(client, k_draft=4)
    for key, kind in [("generated_text", str), ("tokens_per_second", float), ("avg_tokens_per_jump", float),
                      ("latency_ms", float), ("finish_reason", str), ("speculator", str),
                      ("acceptance_rate", float), ("draft_tokens", int), ("accepted_tokens", int),
                      ("target_passes", int), ("queue_ms", float), ("ttft_ms", float)]:
        assert isinstance(body[key], kind), (key, body)
    assert body["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert 1 <= usage["completion_tokens"] <= 16 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert body["speculator"] == "auto" and body["avg_tokens_per_jump"] >= 1.0


def test_generate_stream_schema(client):
    plain = generate(client, speculator="ngram", max_new_tokens=24)
    with client.stream("POST", "/generate", json={"prompt": PROMPT, "max_new_tokens": 24, "speculator": "ngram",
                                                  "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(e) for e in sse_events(r.iter_lines())]
    tokens, done = events[:-1], events[-1]
    assert all(e["type"] == "token" and e["token_count"] >= 1 for e in tokens)
    assert done["type"] == "done" and done["generated_text"] == plain["generated_text"]
    assert "".join(e["text"] for e in tokens) == done["generated_text"]
    assert sum(e["token_count"] for e in tokens) == done["usage"]["completion_tokens"]


def test_models_and_metrics_schema(client):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "specops"
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"] == CONTENT_TYPE_LATEST


# -- the openai client ---------------------------------------------------------------------
def test_openai_completions(oai):
    extra = {"speculator": "ngram"}
    whole = oai.completions.create(model="specops", prompt=PROMPT, max_tokens=16, temperature=0, extra_body=extra)
    assert whole.object == "text_completion" and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.completion_tokens <= 16 and whole.usage.prompt_tokens > 0
    chunks = list(oai.completions.create(model="specops", prompt=PROMPT, max_tokens=16, temperature=0,
                                         stream=True, extra_body=extra))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_openai_chat(oai):
    messages = [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Read a file."}]
    extra = {"speculator": "ngram"}
    whole = oai.chat.completions.create(model="specops", messages=messages, max_tokens=16, temperature=0,
                                        extra_body=extra)
    assert whole.object == "chat.completion" and whole.choices[0].message.role == "assistant"
    assert isinstance(whole.choices[0].message.content, str) and whole.usage.completion_tokens <= 16
    stream = oai.chat.completions.create(model="specops", messages=messages, max_tokens=16, temperature=0,
                                         stream=True, stream_options={"include_usage": True}, extra_body=extra)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_ignore_eos_generates_the_whole_budget(client, oai):
    """A chat prompt whose greedy answer ends at once on the small target (an EOS id first)."""
    question = "Tell me about exceptions."
    ended = generate(client, prompt=f"<|user|>\n{question}<|end|>\n<|assistant|>\n", speculator="none")
    assert ended["finish_reason"] == "stop" and ended["usage"]["completion_tokens"] < 4, "no longer ends early"
    body = generate(client, prompt=f"<|user|>\n{question}<|end|>\n<|assistant|>\n", speculator="none",
                    ignore_eos=True)
    assert body["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 16
    chat = oai.chat.completions.create(model="specops", messages=[{"role": "user", "content": question}],
                                       max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
    assert chat.choices[0].finish_reason == "length" and chat.usage.completion_tokens == 16
    text = oai.completions.create(model="specops", prompt=f"<|user|>\n{question}<|end|>\n<|assistant|>\n",
                                  max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
    assert text.choices[0].finish_reason == "length" and text.usage.completion_tokens == 16


def test_openai_errors_are_typed(oai):
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=4)
    with pytest.raises(openai.UnprocessableEntityError, match="n"):
        oai.completions.create(model="specops", prompt=PROMPT, max_tokens=4, n=2)


# -- metrics -------------------------------------------------------------------------------
def test_metrics_move_by_the_request(client):
    before = scrape(client.base_url.__str__())
    body = generate(client, speculator="ngram", max_new_tokens=32)
    after = scrape(str(client.base_url))

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    spec = {"speculator": "ngram"}
    assert delta("specops_generated_tokens_total", **spec) == body["usage"]["completion_tokens"]
    assert delta("specops_prompt_tokens_total", **spec) == body["usage"]["prompt_tokens"]
    assert delta("specops_target_passes_total", **spec) == body["target_passes"]
    assert delta("specops_spec_draft_tokens_total", **spec) == body["draft_tokens"]
    assert delta("specops_spec_accepted_tokens_total", **spec) == body["accepted_tokens"]
    assert delta("specops_latency_seconds_count", **spec) == 1
    assert delta("specops_avg_jump_count", **spec) == 1
    assert delta("specops_avg_jump_sum", **spec) == pytest.approx(body["avg_tokens_per_jump"], abs=1e-3)
    assert delta("specops_time_to_first_token_seconds_count", **spec) == 1
    assert delta("specops_generations_total", finish_reason=body["finish_reason"], **spec) == 1
    assert delta("specops_requests_total", endpoint="/generate", status="200") == 1
    assert metric(after, "specops_model_ready") == 1
    assert metric(after, "specops_queue_depth") == 0 and metric(after, "specops_requests_in_flight") == 0


# -- concurrency ---------------------------------------------------------------------------
def test_eight_identical_greedy_requests_agree(server):
    # Target-only: speculators adapt k between requests, and a multi-token verify pass may
    # order a near-tie differently from single steps (DESIGN.md section 2).
    body = {"prompt": PROMPT, "max_new_tokens": 48, "temperature": 0, "speculator": "none"}
    with cf.ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: httpx.post(server.base_url + "/generate", json=body, timeout=120),
                                range(8)))
    assert [r.status_code for r in replies] == [200] * 8
    texts = {r.json()["generated_text"] for r in replies}
    assert len(texts) == 1, texts
    assert max(r.json()["queue_ms"] for r in replies) > 0  # they really queued behind each other


# -- disconnects ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def long_body(server, client):
    """A greedy target-only request that would run for seconds: up to the context cap (less room
    for the prompt, or it is refused with 413)."""
    cap = client.get("/health").json()["models"]["context_cap"]
    return {"prompt": long_prompt(server.base_url), "max_new_tokens": min(2048, cap - 64), "speculator": "none"}


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := predicate()):
            return value
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def _check_cancelled_only_the_long_one(server, before, short_reply, long_body):
    """The long generation ended as cancelled well short of its budget, and stays stopped;
    the short request queued behind it completed normally."""
    assert short_reply.status_code == 200, short_reply.text
    assert short_reply.json()["finish_reason"] in ("stop", "length")
    cancelled = {"speculator": "none", "finish_reason": "cancelled"}
    after = _wait_for(lambda: (s := scrape(server.base_url)) and
                      metric(s, "specops_generations_total", **cancelled) > metric(before, "specops_generations_total",
                                                                                   **cancelled) and s)
    tokens = metric(after, "specops_generated_tokens_total", speculator="none") - \
        metric(before, "specops_generated_tokens_total", speculator="none")
    assert 0 < tokens < long_body["max_new_tokens"] / 2
    time.sleep(0.5)  # the generated-tokens counter has stopped: nothing is still generating
    later = scrape(server.base_url)
    assert metric(later, "specops_generated_tokens_total", speculator="none") == \
        metric(after, "specops_generated_tokens_total", speculator="none")
    assert metric(later, "specops_requests_in_flight") == 0


def _short_request(server):
    return httpx.post(server.base_url + "/generate", timeout=60,
                      json={"prompt": PROMPT, "max_new_tokens": 8, "speculator": "ngram"})


def test_stream_disconnect_cancels_its_generation(server, client, long_body):
    before = scrape(server.base_url)
    with cf.ThreadPoolExecutor(1) as pool:
        with httpx.Client(timeout=60) as own, own.stream("POST", server.base_url + "/generate",
                                                          json={**long_body, "stream": True}) as r:
            events = sse_events(r.iter_lines())
            assert json.loads(next(events))["type"] == "token"
            short = pool.submit(_short_request, server)
            _wait_for(lambda: client.get("/health").json()["queue_depth"] == 1)
        # leaving the block closed the connection mid-stream
        _check_cancelled_only_the_long_one(server, before, short.result(30), long_body)


def test_plain_disconnect_cancels_its_generation(server, client, long_body):
    before = scrape(server.base_url)
    with cf.ThreadPoolExecutor(1) as pool:
        gone = threading.Event()

        def impatient():
            try:  # the client gives up after 0.5 s and closes its connection
                httpx.post(server.base_url + "/generate", json=long_body, timeout=httpx.Timeout(60, read=0.5))
            except httpx.ReadTimeout:
                gone.set()

        pool.submit(impatient)
        _wait_for(lambda: client.get("/health").json()["in_flight"] == 1)
        short = pool.submit(_short_request, server)
        _check_cancelled_only_the_long_one(server, before, short.result(30), long_body)
        assert gone.is_set()
