"""Run the real service for tests: `uvicorn main:app` in a subprocess on a free port.

    server = start_server({"SPECOPS_QUEUE_SIZE": "2"})   # waits for /health/live
    server.wait_ready()                                   # waits for /health == 200
    httpx.get(server.base_url + "/health")
    code = server.stop()                                  # SIGTERM, wait, exit code

The child inherits this environment (so SPECOPS_TARGET_MODEL etc. set by the caller
apply), plus `env`, plus HF_HUB_OFFLINE=1: tests never contact the Hugging Face hub.
Only 127.0.0.1 is used. Output goes to a log file, shown by `.log()` on failures.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerHandle:
    base_url: str
    proc: subprocess.Popen
    log_path: Path
    _log_file: object = field(repr=False, default=None)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> httpx.Response:
        return httpx.get(self.base_url + "/health", timeout=5)

    def wait_ready(self, timeout: float = 120.0) -> dict:
        """Poll /health until 200; fail fast (with the log) on `failed` or a dead process,
        stopping the server first (a fixture that fails here never reaches its teardown)."""
        deadline = time.monotonic() + timeout
        body: dict = {}
        while time.monotonic() < deadline:
            self._check_alive()
            body = self.health().json()
            if body["status"] == "ready":
                return body
            if body["status"] == "failed":
                self.stop()
                raise RuntimeError(f"server failed to start: {body['reason']}\n{self.log()}")
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"not ready after {timeout} s (last: {body})\n{self.log()}")

    def wait_state(self, state: str, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        body: dict = {}
        while time.monotonic() < deadline:
            self._check_alive()
            body = self.health().json()
            if body["status"] == state:
                return body
            time.sleep(0.05)
        raise TimeoutError(f"state {state!r} not reached in {timeout} s (last: {body})\n{self.log()}")

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc.returncode}\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (the service drains), wait for exit; SIGKILL after `timeout`. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log_file is not None:
            self._log_file.close()
        return self.proc.returncode


_started: list[subprocess.Popen] = []


@atexit.register
def _kill_leftovers() -> None:
    """A safety net: no server outlives the test session, whatever a test forgot."""
    for proc in _started:
        if proc.poll() is None:
            proc.kill()


def start_server(env: dict[str, str] | None = None, timeout: float = 60.0) -> ServerHandle:
    """Start `uvicorn main:app` on 127.0.0.1:<free port>; return once /health/live answers 200
    (the models may still be loading: call `.wait_ready()` for that)."""
    for attempt in range(3):
        try:
            return _start_once(env, timeout)
        except RuntimeError as err:  # the free port was taken before uvicorn bound it: retry
            if "address already in use" not in str(err) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def ready_server(env: dict[str, str] | None = None):
    """For a module fixture (`yield from ready_server(env)`): a server ready to serve, stopped
    after the module, its clean exit (code 0 after SIGTERM) asserted."""
    handle = start_server(env)
    handle.wait_ready()
    yield handle
    assert handle.stop() == 0, handle.log()


def _start_once(env: dict[str, str] | None, timeout: float) -> ServerHandle:
    port = free_port()
    log_path = Path(tempfile.mkstemp(prefix="specops-server-", suffix=".log")[1])
    log_file = log_path.open("w")
    child_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT, env=child_env, stdout=log_file, stderr=subprocess.STDOUT)
    _started.append(proc)
    server = ServerHandle(f"http://127.0.0.1:{port}", proc, log_path, log_file)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            server._check_alive()
            live = httpx.get(server.base_url + "/health/live", timeout=2)
            if live.status_code == 200 and live.json().get("pid") == proc.pid:  # ours, not a port thief
                return server
        except httpx.TransportError:
            pass
        except RuntimeError:
            log_file.close()
            raise
        time.sleep(0.05)
    server.stop()
    raise TimeoutError(f"/health/live did not answer in {timeout} s\n{server.log()}")


def scrape(base_url: str) -> dict[tuple[str, frozenset], float]:
    """GET /metrics, parsed by prometheus_client's own parser: {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base_url + "/metrics", timeout=5).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(samples: dict, name: str, **labels: str) -> float:
    """The value of one sample (0.0 when it does not exist yet, as for an unused label set)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


LONG_CANDIDATES = ("def read_config(path):\n", "import os\nimport sys\n\n\ndef main():\n",
                   "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "the the the the the the the the")


def long_prompt(base_url: str, tokens: int = 256, headers: dict | None = None) -> str:
    """A prompt whose greedy continuation runs `tokens` long without an end-of-text token, for
    tests that need a generation to still be running (found by asking the server)."""
    for prompt in LONG_CANDIDATES:
        r = httpx.post(base_url + "/generate", headers=headers, timeout=120,
                       json={"prompt": prompt, "max_new_tokens": tokens, "speculator": "none"})
        r.raise_for_status()
        if r.json()["finish_reason"] == "length":
            return prompt
    raise RuntimeError(f"every candidate prompt stopped before {tokens} tokens")
