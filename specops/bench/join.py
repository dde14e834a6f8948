"""`specops bench join`: a long prompt joining a running stream, and alone (not a test).

Starts the service on the default model (or uses --url), then, in one run, --repeats times:
  1. the long prompt alone (--prompt-tokens of filler text, 4 new tokens): its latency;
  2. a stream (chat prompt, --stream-tokens new tokens, ignore_eos) and, once it has 24 tokens,
     the same long prompt: the stream's gaps between events (median, largest, largest while the
     prompt was read) and the prompt's latency beside it.
  3. with --ort-genai, onnxruntime-genai reading the same prompt on the same model folder (its
     prefill: the generator's append_tokens; the service idle meanwhile).
Medians over the repeats. Prints one JSON line (and --json writes it), with the server's
prompt-tokens-per-pass and decoding-rows-per-pass histograms' means.

    specops bench join [--prompt-tokens 7000] [--stream-tokens 400] [--repeats 3] [--ort-genai] [--url URL] [--json F]
"""
from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from ..config import Settings
from ..loader import local_paths
from .measure import emit_report, run_record
from .serve import Server

WORDS = ("river stone light house garden window paper music winter summer market school bridge forest "
         "letter engine silver doctor island yellow animal number people family").split()


def filler(tokens: int) -> str:
    """Text of about `tokens` SmolLM2 tokens (common words, one token each with their space)."""
    return "Summarize these words in one sentence.\n" + " ".join(WORDS[(7 * i) % len(WORDS)] for i in range(tokens - 12))


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


def ort_genai_reader(threads: int = 2):
    """onnxruntime-genai greedy on the served model's folder (scripts/peers): returns a function
    timing its prefill of a text, or None with the reason when it cannot run."""
    from .speculators import peers_on_path

    try:
        peers_on_path()
        from peers import ort_genai as og
        runner = og.greedy_runner(local_paths(Settings()).target, threads=threads)
    except (OSError, ImportError, RuntimeError) as err:
        return None, f"{type(err).__name__}: {err}"

    def prefill(text: str) -> tuple[float, int]:
        ids = runner.tokenizer.encode(text)
        return runner(ids, 1)["prefill_seconds"], len(ids)
    return prefill, None


def histogram_mean(base: str, name: str) -> float | None:
    text = httpx.get(base + "/metrics", timeout=10).text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith(name)}
    count = values.get(f"{name}_count", 0)
    return values[f"{name}_sum"] / count if count else None


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--prompt-tokens", type=int, default=7000)
    ap.add_argument("--stream-tokens", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ort-genai", action="store_true", help="also onnxruntime-genai's prefill of the same "
                    "prompt on the same folder (the served model's, from this machine's settings)")
    ap.add_argument("--url", help="a running server (default: start one, max_batch 4)")
    ap.add_argument("--json", type=Path, help="also write the report here")


def main(args: argparse.Namespace) -> int:
    server = None if args.url else Server({"SPECOPS_MAX_BATCH": "4"})
    base = args.url or server.url
    try:
        health = server.wait_ready(900) if server else httpx.get(base + "/health", timeout=10).json()
        peer, refused = ort_genai_reader() if args.ort_genai else (None, None)
        alone, shared, theirs = [], [], []
        for i in range(args.repeats):  # interleaved; a distinct prompt each time
            alone.append(long_request(base, f"Run {i}. " + filler(args.prompt_tokens)))
            shared.append(joined(base, f"Again {i}. " + filler(args.prompt_tokens), args.stream_tokens))
            if peer is not None:
                theirs.append(peer(f"Run {i}. " + filler(args.prompt_tokens)))
        alone_s = statistics.median(a for a, _ in alone)
        joined_s = statistics.median(s["latency_s"] for s in shared)
        report = {
            "bench": "join", "run": run_record(args.command_line), "prompt_tokens": alone[0][1],
            "stream_tokens": args.stream_tokens, "repeats": args.repeats, "kernel": health["models"]["kernel"],
            "alone_latency_s": round(alone_s, 3), "alone_prompt_tok_per_s": round(alone[0][1] / alone_s, 1),
            "joined_latency_s": round(joined_s, 3), "joined_over_alone": round(joined_s / alone_s, 3),
            "stream_median_gap_ms": round(statistics.median(s["median_gap_ms"] for s in shared), 2),
            "stream_max_gap_ms": round(statistics.median(s["max_gap_ms"] for s in shared), 2),
            "stream_max_gap_over_median": round(statistics.median(s["max_gap_ms"] / s["median_gap_ms"]
                                                                  for s in shared), 2),
            "runs": shared,
            "ort_genai": None if not args.ort_genai else {"refused": refused} if peer is None else {
                "prompt_tokens": theirs[0][1], "prefill_s": round(statistics.median(t for t, _ in theirs), 3),
                "prompt_tok_per_s": round(theirs[0][1] / statistics.median(t for t, _ in theirs), 1),
                "our_rate_over_theirs": round(statistics.median(t for t, _ in theirs) / alone_s, 3)},
            "mean_prompt_tokens_per_pass": histogram_mean(base, "specops_pass_prompt_tokens"),
            "mean_decoding_rows_per_pass": histogram_mean(base, "specops_batch_rows"),
        }
        emit_report(report, args.json)
    finally:
        if server:
            server.stop()
    return 0
