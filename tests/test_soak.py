"""The 60-second soak (`specops bench soak`, specops/bench/soak.py) against a live server on the
small pair: 4 clients, plain and streaming requests on /generate and /v1/chat/completions,
disconnects mid-stream, malformed requests, bursts over a 4-request queue. Asserts what the 10-minute soak asserts:
0 5xx, 0 lost, every 429 with Retry-After, RSS growth < 5% after the first window, no fd or
thread growth."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from server_harness import ready_server

from specops.bench import soak


@pytest.fixture(scope="module")
def server():
    yield from ready_server({"SPECOPS_QUEUE_SIZE": "4"})


def test_sixty_second_soak(server, tmp_path: Path):
    # 15-second windows: a minute's run has four; the first 30 s of load are a warm-up (counted and
    # checked, but not in the windows), as the first minute is in the 10-minute soak. On the tiled
    # kernel the server starts smaller and its heap settles later: in a 3-minute soak (4 clients,
    # this mix) RSS went 352.9 -> 355.0 -> 360.6 MiB over the first three 15 s windows and then
    # stayed at 360.8-361.7 MiB (stock kernels: 364.2 -> 365.7 MiB); after a 15 s warm-up the
    # first window caught that settling (6.0% twice in CI).
    report = soak.run_soak(server.base_url, clients=4, minutes=1.0, bucket_s=15.0, warmup_s=30.0,
                           burst_every_s=10.0, burst_size=16)
    (tmp_path / "soak.json").write_text(json.dumps(report, indent=1))
    summary = json.dumps({k: report[k] for k in ("outcomes", "statuses", "rss", "idle", "windows",
                                                 "failure_examples")}, indent=1)
    assert report["pid"] == server.proc.pid
    assert soak.check(report) == [], summary + "\n" + server.log()[-3000:]
    # the mix really ran: completions, disconnects, refused malformed requests, bursts over the queue
    outcomes = report["outcomes"]
    assert outcomes.get("ok", 0) > 50 and outcomes.get("disconnected", 0) > 0, summary
    assert outcomes.get("rejected", 0) > 0 and report["429"] > 0, summary
    assert {"generate", "generate_stream", "chat", "chat_stream", "burst"} <= set(report["by_kind"]), summary
    assert len(report["windows"]) >= 4 and all(w["completed"] for w in report["windows"][:4]), summary
