#!/usr/bin/env python
"""A long prompt joining a running stream (issue 21's benchmark; not a test).

Starts the service on the default model (or uses --url), then, in one run, --repeats times:
  1. the long prompt alone (--prompt-tokens of filler text, 4 new tokens): its latency;
  2. a stream (chat prompt, --stream-tokens new tokens, ignore_eos) and, once it has 24 tokens,
     the same long prompt: the stream's gaps between events (median, largest, largest while the
     prompt was read) and the prompt's latency beside it.
Medians over the repeats. Prints one JSON line (and --json writes it), with the server's
prompt-tokens-per-pass and decoding-rows-per-pass histograms' means.

    python scripts/join_bench.py [--prompt-tokens 7000] [--stream-tokens 400] [--repeats 3] [--url URL]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from server_harness import start_server  # noqa: E402

from specops.bench import emit_report  # noqa: E402


def filler(tokens: int) -> str:
    """Text of about `tokens` SmolLM2 tokens (numbered items: about 2.4 tokens each)."""
    return "Summarize this list in one sentence.\n" + " ".join(f"item{i}" for i in range(int(tokens / 2.45)))


def long_request(base: str, prompt: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = httpx.post(base + "/generate", json={"prompt": prompt, "max_new_tokens": 4, "speculator": "none"}, timeout=900)
    r.raise_for_status()
    return time.perf_counter() - t0, int(r.json()["usage"]["prompt_tokens"])


def joined(base: str, prompt: str, stream_tokens: int) -> dict:
    stamps, started = [], threading.Event()

    def stream():
        body = {"prompt": "<|im_start|>user\nTell me a long story about a lighthouse.<|im_end|>\n<|im_start|>assistant\n",
                "max_new_tokens": stream_tokens, "stream": True, "ignore_eos": True, "speculator": "none"}
        tokens = 0
        with httpx.Client(timeout=900) as client, client.stream("POST", base + "/generate", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data:") and '"token"' in line:
                    stamps.append(time.perf_counter())
                    tokens += json.loads(line[5:])["token_count"]
                    if tokens >= 24:
                        started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    started.wait(300)
    t0 = time.perf_counter()
    latency, _ = long_request(base, prompt)
    reader.join()
    at, gaps = np.array(stamps[4:]), np.diff(stamps[3:]) * 1e3
    during = gaps[(at > t0) & (at < t0 + latency)]
    return {"latency_s": latency, "median_gap_ms": float(np.median(gaps)), "max_gap_ms": float(gaps.max()),
            "max_gap_during_ms": float(during.max()) if len(during) else None, "events_during": int(len(during))}


def histogram_mean(base: str, name: str) -> float | None:
    text = httpx.get(base + "/metrics", timeout=10).text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith(name)}
    count = values.get(f"{name}_count", 0)
    return values[f"{name}_sum"] / count if count else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-tokens", type=int, default=7000)
    ap.add_argument("--stream-tokens", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--url", help="a running server (default: start one on the default model)")
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args()
    server = None if args.url else start_server({"SPECOPS_MAX_BATCH": "4"})
    base = args.url or server.base_url
    try:
        if server:
            server.wait_ready(timeout=900)
        health = httpx.get(base + "/health", timeout=10).json()
        alone, shared = [], []
        for i in range(args.repeats):  # interleaved; a distinct prompt each time (no prefix reuse)
            prompt = f"Run {i}. " + filler(args.prompt_tokens)
            alone.append(long_request(base, prompt))
            shared.append(joined(base, f"Again {i}. " + filler(args.prompt_tokens), args.stream_tokens))
        alone_s = statistics.median(a for a, _ in alone)
        report = {
            "bench": "join", "prompt_tokens": alone[0][1], "stream_tokens": args.stream_tokens, "repeats": args.repeats,
            "kernel": health["models"]["kernel"],
            "alone_latency_s": alone_s, "alone_prompt_tok_per_s": alone[0][1] / alone_s,
            "joined_latency_s": statistics.median(s["latency_s"] for s in shared),
            "joined_over_alone": statistics.median(s["latency_s"] for s in shared) / alone_s,
            "stream_median_gap_ms": statistics.median(s["median_gap_ms"] for s in shared),
            "stream_max_gap_ms": statistics.median(s["max_gap_ms"] for s in shared),
            "stream_max_gap_over_median": statistics.median(s["max_gap_ms"] / s["median_gap_ms"] for s in shared),
            "runs": shared,
            "mean_prompt_tokens_per_pass": histogram_mean(base, "specops_pass_prompt_tokens"),
            "mean_decoding_rows_per_pass": histogram_mean(base, "specops_batch_rows"),
        }
        emit_report(report, args.json)
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
