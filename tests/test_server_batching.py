"""The service with continuous batching (SPECOPS_MAX_BATCH=4), through real HTTP: concurrent
requests share passes, each answer equals the same request served alone, a client that leaves
mid-stream frees its slot, and the batch is visible in /metrics and /health."""
from __future__ import annotations

import concurrent.futures as cf

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server_harness import start_server

PROMPTS = ["def read_config(path):\n", "class Stack:\n    def __init__(self):\n", "import os\n\ndef main():\n",
           "Rename x to count: def f(x):\n    return x + 1\n", "def fib(n):\n", "# parse a CSV file\n"]


@pytest.fixture(scope="module")
def servers():
    batched = start_server({"SPECOPS_MAX_BATCH": "4", "SPECOPS_QUEUE_SIZE": "16"})
    alone = start_server({"SPECOPS_MAX_BATCH": "1"})
    try:
        batched.wait_ready()
        alone.wait_ready()
        yield batched, alone
    finally:
        batched.stop()
        alone.stop()


def generate(base: str, prompt: str, tokens: int, speculator: str = "ngram") -> dict:
    r = httpx.post(base + "/generate", json={"prompt": prompt, "max_new_tokens": tokens, "k_draft": 4,
                                             "speculator": speculator}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def metric(base: str, name: str) -> dict:
    text = httpx.get(base + "/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples if s.name.startswith(name)}


def test_concurrent_requests_share_passes_and_answer_as_alone(servers):
    batched, alone = servers
    with cf.ThreadPoolExecutor(len(PROMPTS)) as pool:
        got = list(pool.map(lambda ip: generate(batched.base_url, ip[1], 24 + 8 * ip[0]), enumerate(PROMPTS)))
    for i, prompt in enumerate(PROMPTS):
        want = generate(alone.base_url, prompt, 24 + 8 * i)
        assert got[i]["generated_text"] == want["generated_text"], f"prompt {i}"
    sizes = metric(batched.base_url, "specops_batch_size")
    assert sizes[("specops_batch_size_count", ())] > 0
    # some pass ran more than one sequence
    assert sizes[("specops_batch_size_count", ())] > sizes[("specops_batch_size_bucket", (("le", "1.0"),))]
    health = batched.health().json()
    assert health["models"]["memory"]["max_batch"] == 4


def test_a_client_leaving_mid_stream_frees_its_slot(servers):
    batched, _ = servers
    body = {"prompt": "def read_config(path):\n", "max_new_tokens": 400, "stream": True}
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", batched.base_url + "/generate", json=body) as r:
            assert r.status_code == 200
            for i, _ in enumerate(r.iter_lines()):
                if i >= 3:
                    break  # leave: the server cancels the sequence at the next round
    # four slots: four more long requests still run at once and all finish
    with cf.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: generate(batched.base_url, p, 16), PROMPTS[:4]))
    assert all(r["generated_text"] for r in results)
    cancelled = metric(batched.base_url, "specops_generations_total")
    assert sum(v for (name, labels), v in cancelled.items()
               if name == "specops_generations_total" and ("finish_reason", "cancelled") in labels) >= 1


def test_a_long_prompt_joining_does_not_stop_a_running_stream(servers):
    """The prompt is read in chunks that ride the stream's own passes (ragged passes): the stream's
    largest gap between two events stays within a generous multiple of its median, where reading
    the prompt alone first stopped it for the whole prompt (seconds here)."""
    import json
    import threading
    import time

    batched, _ = servers
    if "ragged" not in batched.health().json()["models"]["kernel"]["attention"]:
        pytest.skip("onnxruntime's attention serves here (padded passes, prompts read alone)")
    long_prompt = " ".join(f"item{i}" for i in range(700))  # 1737 tokens of the 2048-token context
    stamps, started = [], threading.Event()

    def stream():
        body = {"prompt": "def read_config(path):\n", "max_new_tokens": 250, "stream": True, "ignore_eos": True,
                "speculator": "none"}
        tokens = 0
        with httpx.Client(timeout=300) as client, client.stream("POST", batched.base_url + "/generate", json=body) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data:") and '"token"' in line:
                    stamps.append(time.perf_counter())
                    tokens += json.loads(line[5:])["token_count"]  # events carry what a client has not read yet
                    if tokens >= 20:
                        started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(120)
    t0 = time.perf_counter()
    long = generate(batched.base_url, long_prompt, 4, speculator="none")
    t1 = time.perf_counter()
    reader.join(300)
    assert long["generated_text"] is not None
    at, gaps = np.array(stamps[4:]), np.diff(stamps[3:])
    assert ((at > t0) & (at < t1)).sum() >= 3, "the stream made no progress while the prompt was read"
    assert gaps.max() <= max(25 * np.median(gaps), 0.25), (gaps.max(), np.median(gaps), t1 - t0)
    chunks = metric(batched.base_url, "specops_pass_prompt_tokens")
    assert chunks[("specops_pass_prompt_tokens_count", ())] > 1


def test_the_portable_build_serves_target_only_greedy_output():
    """SPECOPS_KERNEL_BUILD=portable (the build for CPUs without AVX-512, which this CPU runs too):
    /health names its path, and concurrent speculative requests answer exactly what target-only
    decoding gives each alone."""
    server = start_server({"SPECOPS_MAX_BATCH": "4", "SPECOPS_KERNEL_BUILD": "portable"})
    try:
        server.wait_ready()
        kernel = server.health().json()["models"]["kernel"]
        if kernel["target"] != "tiled":
            pytest.skip(f"the tiled kernel does not run here: {kernel['note']}")
        assert (kernel["precision"], kernel["path"]) == ("fp32", "fp32-portable"), kernel
        assert kernel["attention"].startswith("specops.Attention (ragged passes"), kernel
        with cf.ThreadPoolExecutor(4) as pool:
            got = list(pool.map(lambda p: generate(server.base_url, p, 32), PROMPTS[:4]))
        for prompt, answer in zip(PROMPTS[:4], got):
            assert answer["generated_text"] == generate(server.base_url, prompt, 32, speculator="none")["generated_text"]
    finally:
        assert server.stop() == 0
