#!/usr/bin/env python
"""Continuous batching against one request at a time, same requests, one run (issue 14's
benchmark; not a test). Starts the service twice on the default model (SPECOPS_MAX_BATCH=1, then
=B), each time 1 client and then C clients streaming the same chat prompts through /generate;
optionally OpenVINO GenAI on the same weights, the same prompts all in one generate call (its
continuous batching) and one at a time. Prints one JSON line (and --json writes it).
--ignore-eos: every request, ours and OpenVINO's, generates exactly --max-new-tokens, so tokens/s
compare equal lengths.

    python scripts/batch_bench.py [--batch 8] [--clients 8] [--requests 16] [--max-new-tokens 64]
        [--speculator auto] [--openvino] [--ignore-eos] [--json out.json]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "tests")]

from load_test import run_clients, summarize  # noqa: E402
from server_harness import start_server  # noqa: E402

from specops.bench import emit_report, load_prompt_items  # noqa: E402

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(question: str) -> str:
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            "<|im_start|>assistant\n")


def serve_and_load(env: dict, bodies: list[dict], clients: list[int]) -> dict:
    server = start_server(env)
    try:
        health = server.wait_ready(timeout=300)
        out = {"memory": health["models"]["memory"]}
        for c in clients:
            results, wall = asyncio.run(run_clients(server.base_url, bodies, c, {}, stream=True))
            out[f"clients_{c}"] = summarize(results, wall)
        metrics = httpx.get(server.base_url + "/metrics", timeout=10).text
        out["batch_size_sum"] = next((float(line.split()[-1]) for line in metrics.splitlines()
                                      if line.startswith("specops_batch_size_sum")), None)
        out["batch_size_count"] = next((float(line.split()[-1]) for line in metrics.splitlines()
                                        if line.startswith("specops_batch_size_count")), None)
        return out
    finally:
        server.stop()


def openvino(texts: list[str], max_new_tokens: int, ignore_eos: bool) -> dict:
    from peers.subprocess_peer import openvino_peer

    peer = openvino_peer("greedy", ignore_eos=ignore_eos)
    try:
        t0 = time.perf_counter()
        one = sum(peer.run(t, max_new_tokens)["n_tokens"] for t in texts)
        alone = one / (time.perf_counter() - t0)
        batch = peer.run_batch(texts, max_new_tokens)
        return {"one_at_a_time_tok_s": round(alone, 1),
                "batched_tok_s": round(batch["n_tokens"] / batch["total_seconds"], 1),
                "batched_tokens": batch["n_tokens"], "config": peer.config}
    finally:
        peer.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--speculator", default="auto")
    ap.add_argument("--set", default="chat_real", help="prompt set (prompts/<set>.jsonl)")
    ap.add_argument("--openvino", action="store_true", help="also OpenVINO GenAI (scripts/peers/setup_peers.sh)")
    ap.add_argument("--ignore-eos", action="store_true", help="every request generates exactly --max-new-tokens")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    items = load_prompt_items(args.set)
    texts = [chatml(items[i % len(items)]["prompt"]) for i in range(args.requests)]
    bodies = [{"prompt": t, "max_new_tokens": args.max_new_tokens, "speculator": args.speculator, "k_draft": 8,
               "ignore_eos": args.ignore_eos} for t in texts]
    env = {"SPECOPS_QUEUE_SIZE": str(args.requests + 8)}
    clients = [1, args.clients]
    report = {"requests": args.requests, "max_new_tokens": args.max_new_tokens, "speculator": args.speculator,
              "set": args.set, "ignore_eos": args.ignore_eos}
    report["b1"] = serve_and_load({**env, "SPECOPS_MAX_BATCH": "1"}, bodies, clients)
    report[f"b{args.batch}"] = serve_and_load({**env, "SPECOPS_MAX_BATCH": str(args.batch)}, bodies, clients)
    b1, bn = report["b1"], report[f"b{args.batch}"]
    many, one = f"clients_{args.clients}", "clients_1"
    report["ratios"] = {
        f"{many}_tok_s_vs_b1": round(bn[many]["tokens_per_s"] / b1[many]["tokens_per_s"], 3),
        f"{many}_p50_latency_vs_b1": round(bn[many]["latency_ms"]["p50"] / b1[many]["latency_ms"]["p50"], 3),
        f"{one}_tok_s_vs_b1": round(bn[one]["tokens_per_s"] / b1[one]["tokens_per_s"], 3),
        "mean_batch_size": round(bn["batch_size_sum"] / bn["batch_size_count"], 2) if bn["batch_size_count"] else None,
    }
    if args.openvino:
        report["openvino"] = openvino(texts[:args.clients], args.max_new_tokens, args.ignore_eos)
        report["ratios"][f"{many}_tok_s_vs_openvino_batched"] = round(
            bn[many]["tokens_per_s"] / report["openvino"]["batched_tok_s"], 3)
    emit_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
