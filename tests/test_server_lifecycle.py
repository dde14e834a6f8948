"""Start-up and shutdown of the real service: a sync that fails on a model folder missing a
file, a slow start (a model file on storage that answers late), SIGTERM draining."""
from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from specops.config import Settings
from specops.loader import local_paths
from specops.runtime.model_folder import MANIFEST
from server_harness import long_prompt, start_server


@pytest.fixture(scope="module")
def target_folder() -> Path:
    return local_paths(Settings()).target  # SPECOPS_TARGET_MODEL, or the embedded default


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def _expect_unavailable(base_url: str, state: str) -> dict:
    """Readiness and generation say `state` with 503; liveness stays 200."""
    assert httpx.get(base_url + "/health/live").status_code == 200
    health = httpx.get(base_url + "/health")
    assert health.status_code == 503 and health.json()["status"] == state
    for path, body in [("/generate", {"prompt": "x"}), ("/v1/completions", {"model": "specops", "prompt": "x"})]:
        r = httpx.post(base_url + path, json=body)
        assert r.status_code == 503 and r.json()["error"]["state"] == state, r.text
    return health.json()


def test_missing_file_fails_the_sync_and_says_which(target_folder, tmp_path):
    folder = _copy(target_folder, tmp_path / "target")
    weights = max(folder.iterdir(), key=lambda p: p.stat().st_size)  # the weights file
    weights.unlink()
    server = start_server({"SPECOPS_TARGET_MODEL": str(folder)})
    try:
        server.wait_state("failed")
        body = _expect_unavailable(server.base_url, "failed")
        # found while syncing when a manifest lists the file, else when onnxruntime opens the model
        assert body["reason"].split(":")[0] in ("syncing", "loading")
        assert weights.name in body["reason"] and ("missing" in body["reason"] or "not exist" in body["reason"])
        assert server.proc.poll() is None  # it stays up to report the failure
    finally:
        assert server.stop() == 0, server.log()


def test_slow_start_keeps_liveness_and_refuses_work_until_ready(target_folder, tmp_path):
    # tokenizer_config.json becomes a FIFO: loading blocks reading it, as on a slow volume,
    # until this test writes the real contents.
    folder = _copy(target_folder, tmp_path / "target")
    config = folder / "tokenizer_config.json"
    contents = config.read_bytes()
    config.unlink()
    os.mkfifo(config)
    manifest = folder / MANIFEST
    if manifest.exists():  # the manifest hashes regular files only
        manifest.write_text("".join(line + "\n" for line in manifest.read_text().splitlines()
                                    if not line.endswith(config.name)))
    server = start_server({"SPECOPS_TARGET_MODEL": str(folder)})
    try:
        server.wait_state("loading")
        for _ in range(5):
            _expect_unavailable(server.base_url, "loading")
            time.sleep(0.1)
        writer = threading.Thread(target=config.write_bytes, args=(contents,), daemon=True)
        writer.start()
        server.wait_ready()
        writer.join(5)
        r = httpx.post(server.base_url + "/generate", json={"prompt": "def f():\n", "max_new_tokens": 4})
        assert r.status_code == 200, r.text
    finally:
        if server.proc.poll() is None and config.exists():
            threading.Thread(target=lambda: config.write_bytes(contents), daemon=True).start()
        assert server.stop() == 0, server.log()


def _stream_until_done(client: httpx.Client, url: str, body: dict, started: threading.Event) -> dict:
    with client.stream("POST", url, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                started.set()
                if event["type"] == "done":
                    return event
    raise AssertionError("stream ended without a done event")


def _sigterm_during_requests(env: dict, tokens: int):
    """Start a streaming request and a queued one, send SIGTERM once the first is running;
    returns (server, exit code, streamed done event, queued reply, reply to a late request)."""
    server = start_server(env)
    server.wait_ready()
    # probing 256 tokens is enough: past the grace period the generation is cut well before
    body = {"prompt": long_prompt(server.base_url, min(tokens, 256)), "max_new_tokens": tokens, "speculator": "none"}
    started = threading.Event()
    with cf.ThreadPoolExecutor(2) as pool, httpx.Client(timeout=60) as client:
        streamed = pool.submit(_stream_until_done, client, server.base_url + "/generate", body, started)
        assert started.wait(30)
        queued = pool.submit(client.post, server.base_url + "/generate", json={**body, "max_new_tokens": 8})
        while server.health().json()["queue_depth"] < 1:
            time.sleep(0.01)
        server.proc.send_signal(signal.SIGTERM)
        server.wait_state("draining", timeout=10)
        late = httpx.post(server.base_url + "/generate", json=body)
        done, queued_reply = streamed.result(60), queued.result(60)
    return server, server.proc.wait(60), done, queued_reply, late


def test_sigterm_lets_running_and_queued_requests_finish_then_exits_0():
    server, code, done, queued, late = _sigterm_during_requests({}, tokens=256)
    assert late.status_code == 503 and late.json()["error"]["state"] == "draining"
    assert done["finish_reason"] == "length" and done["usage"]["completion_tokens"] == 256
    assert queued.status_code == 200 and queued.json()["usage"]["completion_tokens"] >= 1
    assert code == 0, server.log()
    assert "drained: every request finished" in server.log()


def test_sigterm_past_the_grace_period_cancels_and_refuses_but_loses_nothing():
    server, code, done, queued, _ = _sigterm_during_requests({"SPECOPS_DRAIN_GRACE_S": "0.3"}, tokens=2000)
    assert done["finish_reason"] == "cancelled" and done["usage"]["completion_tokens"] < 2000
    assert queued.status_code == 503 and queued.json()["error"]["code"] == "shutdown"
    assert code == 0, server.log()


@pytest.mark.parametrize("grace, delay", [("25", 0.0), ("25", 0.5), ("0.05", 0.0)])
def test_sigterm_while_the_model_loads_exits_0(grace, delay):
    """A pod stopped during its start-up. SIGTERM while the model loads used to end the process
    with SIGABRT ("terminate called without an active exception": the interpreter exited while
    the loading thread was inside onnxruntime, 4 times in 5 here). Now the load stops at its next
    check (between phases or timing passes) within the grace period, or, past it, the process
    exits at once; either way with code 0."""
    server = start_server({"SPECOPS_DRAIN_GRACE_S": grace})
    server.wait_state("loading")
    time.sleep(delay)
    code = server.stop(timeout=90)
    log = server.log()
    assert code == 0 and "terminate called" not in log, log
    stopped = "model sync stopped while loading" in log
    exited = "the model load did not stop within" in log
    assert stopped or exited, log  # it was still loading when the signal came
    if grace == "25":
        assert stopped, log


def test_hub_source_that_cannot_be_fetched_fails_with_the_reason(tmp_path):
    # HF_HUB_OFFLINE=1 (set by the harness): the download fails at once, without network
    server = start_server({"SPECOPS_TARGET_MODEL": "specops-test/no-such-model", "SPECOPS_SYNC_RETRIES": "0",
                           "SPECOPS_MODEL_CACHE_DIR": str(tmp_path)})
    try:
        body = server.wait_state("failed")
        assert body["reason"].startswith("syncing: specops-test/no-such-model: download failed")
    finally:
        assert server.stop() == 0, server.log()
