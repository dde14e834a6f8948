"""A real Prometheus (Debian's `prometheus` package, 2.x) scrapes a live server with the scrape
configuration in infra/prometheus/, and its HTTP API answers for specops_avg_jump and
specops_latency_seconds after one generation; `promtool check metrics` finds no problem in
/metrics. Where the binaries are missing the test installs the package (root and apt-get); it
skips, saying why, only where that is not possible."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from server_harness import ROOT, free_port, ready_server

CONFIG = ROOT / "infra" / "prometheus" / "prometheus.yml"
BINARIES = ("prometheus", "promtool")


def _install() -> str | None:
    """Install Debian's prometheus package if needed; None when both binaries are there, else why not."""
    if all(shutil.which(b) for b in BINARIES):
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "prometheus/promtool are not installed, and installing Debian's `prometheus` package needs " \
               "root and apt-get (run `apt-get install -y prometheus`)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:  # a stale package list: refresh it once
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if not all(shutil.which(b) for b in BINARIES):
        return f"`apt-get install prometheus` did not provide prometheus and promtool: {done.stderr[-500:]}"
    return None


@pytest.fixture(scope="module")
def prometheus_binaries():
    why = _install()
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def server():
    yield from ready_server()


def _scrape_config(target: str, dest: Path) -> Path:
    """infra's configuration, its target and intervals replaced for a test."""
    config = yaml.safe_load(CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "specops")
    job["static_configs"][0]["targets"] = [target]
    dest.write_text(yaml.safe_dump(config))
    return dest


class _Starting(Exception):
    """Prometheus listens but answers 503 "Service Unavailable" until its storage is ready."""


def _query(api: str, promql: str) -> list[dict]:
    response = httpx.get(api + "/api/v1/query", params={"query": promql}, timeout=5)
    if response.status_code == 503:
        raise _Starting(response.text)
    reply = response.json()
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


def test_promtool_finds_no_problem_in_metrics(prometheus_binaries, server):
    httpx.post(server.base_url + "/generate", json={"prompt": "def f():\n", "max_new_tokens": 8}, timeout=60)
    text = httpx.get(server.base_url + "/metrics").text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check.stdout + check.stderr


def test_real_prometheus_scrapes_and_answers(prometheus_binaries, server, tmp_path):
    checked = subprocess.run(["promtool", "check", "config", str(CONFIG)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    target = server.base_url.removeprefix("http://")
    config = _scrape_config(target, tmp_path / "prometheus.yml")
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    log = (tmp_path / "prometheus.log").open("w")
    prometheus = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                   f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        r = httpx.post(server.base_url + "/generate", json={"prompt": "def f():\n", "max_new_tokens": 16,
                                                            "speculator": "ngram"}, timeout=60)
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 40
        results: dict[str, list] = {}
        queries = {"up": 'up{job="specops"}',
                   "jump": 'specops_avg_jump_count{job="specops", speculator="ngram"}',
                   "latency": 'specops_latency_seconds_count{job="specops", speculator="ngram"}',
                   "latency_p50": 'histogram_quantile(0.5, sum by (le) (specops_latency_seconds_bucket{job="specops"}))'}
        while time.monotonic() < deadline:
            assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                results = {name: _query(api, q) for name, q in queries.items()}
            except (httpx.TransportError, _Starting):  # not listening, or not ready, yet
                results = {}
            if results and all(results.values()) and float(results["jump"][0]["value"][1]) >= 1:
                break
            time.sleep(0.5)
        assert results and all(results.values()), (results, (tmp_path / "prometheus.log").read_text())
        assert float(results["up"][0]["value"][1]) == 1
        assert float(results["jump"][0]["value"][1]) >= 1 and float(results["latency"][0]["value"][1]) >= 1
        assert 0 < float(results["latency_p50"][0]["value"][1]) < 120
        jump_sum = _query(api, 'specops_avg_jump_sum{job="specops", speculator="ngram"}')
        assert float(jump_sum[0]["value"][1]) >= 1  # tokens per jump is at least 1
        targets = httpx.get(api + "/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        assert [t["health"] for t in targets if t["labels"]["job"] == "specops"] == ["up"], targets
        assert targets[0]["labels"]["service"] == "specops"  # the static label of infra's configuration
    finally:
        prometheus.terminate()
        prometheus.wait(20)
        log.close()
