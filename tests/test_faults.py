"""Faults, each on a real server (uvicorn in a subprocess, the small pair): damaged weights, the
model folder removed while serving, a model cache that cannot be written, SIGKILL then restart,
100 clients leaving at once mid-stream, SIGTERM under a batched load. Each ends in a clear state
(/health says what and why), with nothing lost and no crash loop.

The basic SIGTERM drain, a missing file and a hub repo that cannot be fetched are in
test_server_lifecycle.py; these extend them."""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import httpx
import pytest

import server_harness
from server_harness import long_prompt, metric, scrape, start_server
from specops.config import Settings
from specops.loader import local_paths


@pytest.fixture(scope="module")
def target_folder() -> Path:
    return local_paths(Settings()).target  # SPECOPS_TARGET_MODEL, or the embedded default


def _weights(folder: Path) -> Path:
    return next(folder.glob("*.onnx.data"))


def _assert_failed_and_stays_up(server, *names: str, phase: str) -> str:
    """`failed` naming each of `names`; generation 503 with the reason; liveness 200; and a few
    seconds later still the same process, still failed, the sync tried once (no crash loop)."""
    body = server.wait_state("failed", timeout=60)
    reason = body["reason"]
    assert reason.startswith(f"{phase}:"), reason
    for name in names:
        assert name in reason, (name, reason)
    r = httpx.post(server.base_url + "/generate", json={"prompt": "x", "max_new_tokens": 2})
    assert r.status_code == 503 and r.json()["error"]["state"] == "failed" and r.json()["error"]["reason"] == reason
    assert "Retry-After" not in r.headers  # failed is final: retrying this replica does not help
    time.sleep(2)
    live = httpx.get(server.base_url + "/health/live")
    assert live.status_code == 200 and live.json()["pid"] == server.proc.pid
    again = server.health().json()
    assert again["status"] == "failed" and again["reason"] == reason and again["state_age_s"] >= 2
    assert server.log().count("model sync failed") == 1, server.log()
    assert metric(scrape(server.base_url), "specops_model_ready") == 0
    return reason


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        os.truncate(path, path.stat().st_size // 2)
    else:  # same size, 4 KiB of zeros in the middle
        with path.open("r+b") as f:
            f.seek(path.stat().st_size // 2)
            f.write(b"\0" * 4096)


@pytest.mark.parametrize("how,checksums", [("truncated", True), ("corrupted", True), ("truncated", False)])
def test_damaged_weights_fail_the_sync_naming_the_file(target_folder, tmp_path, how, checksums):
    """With the manifest checked (the default) any damage is found while syncing; without it, a
    truncated weights file is found when onnxruntime opens the model. (Bytes changed in place with
    checksums off cannot be found: the model loads and generates other text.)"""
    folder = tmp_path / "target"
    shutil.copytree(target_folder, folder)
    weights = _weights(folder)
    _damage(weights, how)
    server = start_server({"SPECOPS_TARGET_MODEL": str(folder), "SPECOPS_VERIFY_CHECKSUMS": str(checksums).lower()})
    try:
        reason = _assert_failed_and_stays_up(server, weights.name, phase="syncing" if checksums else "loading")
        if checksums:
            assert "checksum mismatch" in reason
        else:
            assert str(weights.stat().st_size) in reason and "truncated or corrupt" in reason
    finally:
        assert server.stop() == 0, server.log()


def _stream(base_url: str, body: dict, started: threading.Event) -> dict:
    with httpx.Client(timeout=120) as client, client.stream("POST", base_url + "/generate",
                                                           json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                started.set()
                if event["type"] != "token":
                    return event
    raise AssertionError("the stream ended without a done event")


def test_model_folder_removed_while_serving(target_folder, tmp_path):
    """The engine holds the model in memory: the request in flight finishes. The server then
    says the files are gone (failed, naming the file) and refuses new work with 503, since this
    replica could not be restarted as it is."""
    folder = tmp_path / "target"
    shutil.copytree(target_folder, folder)
    server = start_server({"SPECOPS_TARGET_MODEL": str(folder)})
    try:
        server.wait_ready()
        body = {"prompt": long_prompt(server.base_url, 256), "max_new_tokens": 256, "speculator": "none"}
        started = threading.Event()
        with cf.ThreadPoolExecutor(1) as pool:
            streaming = pool.submit(_stream, server.base_url, body, started)
            assert started.wait(30)
            shutil.rmtree(folder)
            health = server.health()
            assert health.status_code == 503 and health.json()["status"] == "failed", health.text
            reason = health.json()["reason"]
            assert reason.startswith("serving:") and str(folder) in reason and "removed while serving" in reason
            late = httpx.post(server.base_url + "/generate", json={"prompt": "x", "max_new_tokens": 2})
            assert late.status_code == 503 and late.json()["error"]["reason"] == reason
            done = streaming.result(60)
        assert done["type"] == "done" and done["finish_reason"] == "length", done
        assert done["usage"]["completion_tokens"] == 256
        assert httpx.get(server.base_url + "/health/live").status_code == 200
        assert metric(scrape(server.base_url), "specops_model_ready") == 0
    finally:
        assert server.stop() == 0, server.log()


# -- a model cache that cannot take a download ---------------------------------------------------
def _namespace_wrapper(tmp_path: Path, setup: str) -> str | None:
    """A stand-in for the Python executable that runs the server in a private mount namespace
    after `setup` (shell; $D is the cache folder), or None where that is not possible (not root,
    no unshare). The pid stays the server's (unshare and sh exec, they do not fork)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return None
    if subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=16k tmpfs {tmp_path}"],
                      capture_output=True).returncode != 0:
        return None
    wrapper = tmp_path / "python-in-namespace"
    wrapper.write_text(f'#!/bin/sh\nexec unshare -m sh -c \'{setup} && exec "$0" "$@"\' {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.mark.parametrize("case", ["not_a_directory", "read_only", "full"])
def test_unwritable_cache_fails_the_sync_with_the_reason(tmp_path, monkeypatch, case):
    # HF_HUB_OFFLINE=1 (the harness): no download is tried, so the cache's own problem must be named
    cache = tmp_path / "cache"
    expected = {"not_a_directory": "Not a directory", "read_only": "Read-only file system",
                "full": "No space left on device"}[case]
    if case == "not_a_directory":
        (tmp_path / "file").write_text("a file, not a folder")
        cache = tmp_path / "file" / "cache"
    else:
        cache.mkdir()
        setup = {"read_only": f"mount -t tmpfs -o ro tmpfs {cache}",
                 "full": f"mount -t tmpfs -o size=64k tmpfs {cache} && "
                         f"(dd if=/dev/zero of={cache}/fill bs=4k 2>/dev/null || true)"}[case]
        wrapper = _namespace_wrapper(tmp_path, setup)
        if wrapper is not None:
            monkeypatch.setattr(server_harness, "sys", types.SimpleNamespace(executable=wrapper))
        elif case == "read_only" and os.geteuid() != 0:
            cache.chmod(0o555)  # enough without root
            expected = "Permission denied"
        else:
            pytest.skip(f"{case}: needs root and `unshare -m` (a private mount namespace for a "
                        f"{'read-only' if case == 'read_only' else 'tiny'} tmpfs); not available here")
    server = start_server({"SPECOPS_TARGET_MODEL": "specops-test/no-such-model", "SPECOPS_SYNC_RETRIES": "0",
                           "SPECOPS_MODEL_CACHE_DIR": str(cache)})
    try:
        reason = _assert_failed_and_stays_up(server, "specops-test/no-such-model", str(cache), expected,
                                             phase="syncing")
        assert "cannot be written (model_cache_dir)" in reason
    finally:
        assert server.stop() == 0, server.log()


# -- SIGKILL, then the same command again ----------------------------------------------------------
def test_sigkill_then_restart_comes_back_ready_and_serves(tmp_path, monkeypatch):
    server = start_server()
    server.wait_ready()
    port = int(server.base_url.rsplit(":", 1)[1])
    body = {"prompt": long_prompt(server.base_url, 256), "max_new_tokens": 256, "speculator": "none"}
    started = threading.Event()
    with cf.ThreadPoolExecutor(1) as pool:
        streaming = pool.submit(_stream, server.base_url, body, started)
        assert started.wait(30)
        server.proc.kill()
        assert server.proc.wait(10) == -signal.SIGKILL
        with pytest.raises(httpx.TransportError):  # the client learns at once: no hang
            streaming.result(10)
    server.stop()
    monkeypatch.setattr(server_harness, "free_port", lambda: port)  # the same port, as a restart would
    again = start_server()
    try:
        again.wait_ready(timeout=120)
        r = httpx.post(again.base_url + "/generate", json={**body, "max_new_tokens": 8}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8, r.text
    finally:
        assert again.stop() == 0, again.log()


# -- 100 clients leave at once ----------------------------------------------------------------------
async def _hundred_leave_at_once(base_url: str, body: dict, batch: int, clients: int = 100) -> float:
    """`clients` streams: `batch` of them running (each has had its first event), the rest queued;
    then every connection closes at once. Returns the seconds until the worker is idle."""
    running = 0
    first_event = asyncio.Event()

    async def hold(client: httpx.AsyncClient) -> None:
        nonlocal running
        async with client.stream("POST", "/generate", json={**body, "stream": True}) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    running += 1
                    first_event.set()
                    await asyncio.Event().wait()  # mid-stream, until cancelled

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as probe:
        client = httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits)
        tasks = [asyncio.ensure_future(hold(client)) for _ in range(clients)]
        deadline = time.monotonic() + 60
        while True:
            health = (await probe.get("/health")).json()
            if running == batch and health["in_flight"] == batch and health["queue_depth"] == clients - batch:
                break
            for task in tasks:  # a stream that failed: show why
                if task.done() and task.exception() is not None:
                    raise task.exception()
            assert time.monotonic() < deadline, (running, health)
            await asyncio.sleep(0.05)
        t0 = time.monotonic()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()  # every connection is closed by now
        while True:
            health = (await probe.get("/health")).json()
            if health["in_flight"] == 0 and health["queue_depth"] == 0:
                return time.monotonic() - t0
            assert time.monotonic() - t0 < 10, health
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("batch", [1, 4])
def test_hundred_clients_disconnect_at_once_mid_stream(batch):
    server = start_server({"SPECOPS_MAX_BATCH": str(batch), "SPECOPS_QUEUE_SIZE": "128"})
    try:
        server.wait_ready()
        cap = server.health().json()["models"]["context_cap"]
        body = {"prompt": long_prompt(server.base_url, 256), "max_new_tokens": min(2000, cap - 64),
                "speculator": "none"}
        before = scrape(server.base_url)
        idle_after_s = asyncio.run(_hundred_leave_at_once(server.base_url, body, batch))
        # the running ones stop at their next round, the queued ones leave the queue: no backlog
        assert idle_after_s < 3, idle_after_s
        after = scrape(server.base_url)
        def finished(reason: str) -> float:
            return (metric(after, "specops_generations_total", speculator="none", finish_reason=reason)
                    - metric(before, "specops_generations_total", speculator="none", finish_reason=reason))
        # the running ones were cancelled; a queued one the worker took before its own disconnect
        # reached the event loop ran for a round and was cancelled too; none ran to its end
        assert batch <= finished("cancelled") <= batch + 8 and finished("length") == 0
        assert metric(after, "specops_queue_depth") == 0 and metric(after, "specops_requests_in_flight") == 0
        t0 = time.monotonic()
        r = httpx.post(server.base_url + "/generate", json={"prompt": "def f():\n", "max_new_tokens": 8}, timeout=30)
        assert r.status_code == 200 and r.json()["queue_ms"] < 1000, r.text
        assert time.monotonic() - t0 < 10
    finally:
        assert server.stop() == 0, server.log()


# -- SIGTERM under a batched load --------------------------------------------------------------------
def _complete_stream(base_url: str, body: dict) -> dict:
    return _stream(base_url, body, threading.Event())


def test_sigterm_under_batched_load_finishes_in_flight_refuses_new_exits_0():
    """Batch 4 (test_server_lifecycle.py drains batch 1): 4 streams running and 4 plain requests
    queued when SIGTERM comes; all 8 complete, a new request gets 503, the exit code is 0."""
    server = start_server({"SPECOPS_MAX_BATCH": "4", "SPECOPS_QUEUE_SIZE": "16"})
    server.wait_ready()
    # streams long enough to still run when the plain requests arrive (a prompt joins at once on
    # ragged passes, so 128 tokens each could all finish first on a busy machine)
    body = {"prompt": long_prompt(server.base_url, 128), "max_new_tokens": 320, "speculator": "none",
            "ignore_eos": True}
    with cf.ThreadPoolExecutor(8) as pool:
        streams = [pool.submit(_complete_stream, server.base_url, body) for _ in range(4)]
        deadline = time.monotonic() + 30
        while server.health().json()["in_flight"] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        plain = [pool.submit(httpx.post, server.base_url + "/generate", json={**body, "max_new_tokens": 32},
                             timeout=120) for _ in range(4)]
        while server.health().json()["queue_depth"] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.proc.send_signal(signal.SIGTERM)
        server.wait_state("draining", timeout=10)
        late = httpx.post(server.base_url + "/generate", json=body)
        assert late.status_code == 503 and late.json()["error"]["state"] == "draining", late.text
        assert int(late.headers["Retry-After"]) >= 1
        done = [s.result(120) for s in streams]
        replies = [p.result(120) for p in plain]
    assert all(d["type"] == "done" and d["usage"]["completion_tokens"] == 320 for d in done), done
    assert all(r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 32 for r in replies)
    assert server.proc.wait(60) == 0, server.log()
    assert "drained: every request finished" in server.log()
