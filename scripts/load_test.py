"""Load test against a running SpecOps server: concurrent clients, a fixed count of requests.

    python scripts/load_test.py --url http://127.0.0.1:8888 --clients 8 --requests 64
    python scripts/load_test.py --requests 16 --engine-baseline --rounds 5

Each request streams /generate (so time to first token is seen by the client; --no-stream
sends plain requests and takes TTFT from the server's reply). Prints one
JSON line: requests/s, tokens/s, latency and TTFT percentiles (ms), errors by kind. With
--engine-baseline the same requests also run through an in-process engine (the server's
SPECOPS_* settings must match), one client, each request in the engine then through HTTP
back to back: the engine's own tokens/s and the HTTP/engine ratio (median over --rounds).
Greedy, fixed prompt order (--seed): runs are comparable.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_prompts(path: Path, count: int, seed: int) -> list[str]:
    prompts = [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]
    random.Random(seed).shuffle(prompts)
    return [prompts[i % len(prompts)] for i in range(count)]


async def one_request(client: httpx.AsyncClient, body: dict) -> dict:
    """Stream one /generate; returns latency, TTFT, tokens, or the error kind."""
    t0 = time.perf_counter()
    ttft = None
    async with client.stream("POST", "/generate", json={**body, "stream": True}) as r:
        if r.status_code != 200:
            await r.aread()
            return {"error": f"http_{r.status_code}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "token" and ttft is None:
                ttft = time.perf_counter() - t0
            elif event["type"] == "done":
                latency = time.perf_counter() - t0
                return {"latency_s": latency, "ttft_s": ttft if ttft is not None else latency,
                        "tokens": event["usage"]["completion_tokens"],
                        "server_tokens_per_second": event["tokens_per_second"]}
    return {"error": "no_done_event"}


async def one_plain_request(client: httpx.AsyncClient, body: dict) -> dict:
    """One non-streaming /generate; TTFT is then the server's own figure (ttft_ms)."""
    t0 = time.perf_counter()
    r = await client.post("/generate", json=body)
    if r.status_code != 200:
        return {"error": f"http_{r.status_code}"}
    reply = r.json()
    return {"latency_s": time.perf_counter() - t0, "ttft_s": reply["ttft_ms"] / 1000,
            "tokens": reply["usage"]["completion_tokens"], "server_tokens_per_second": reply["tokens_per_second"]}


async def run_clients(url: str, bodies: list[dict], clients: int, headers: dict,
                      stream: bool = True) -> tuple[list[dict], float]:
    queue: asyncio.Queue = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    results: list[dict] = []

    request = one_request if stream else one_plain_request

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            try:
                results.append(await request(client, body))
            except httpx.HTTPError as err:
                results.append({"error": type(err).__name__})

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits) as client:
        await request(client, bodies[0])  # warm-up, not counted
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        return results, time.perf_counter() - t0


def percentiles_ms(values: list[float]) -> dict:
    if not values:
        return {}
    p = np.percentile(np.array(values) * 1000, [50, 95, 99])
    return {"p50": round(float(p[0]), 2), "p95": round(float(p[1]), 2), "p99": round(float(p[2]), 2)}


def summarize(results: list[dict], wall_s: float) -> dict:
    ok = [r for r in results if "error" not in r]
    errors: dict[str, int] = {}
    for r in results:
        if "error" in r:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    tokens = sum(r["tokens"] for r in ok)
    return {"ok": len(ok), "errors": sum(errors.values()), "error_kinds": errors, "wall_s": round(wall_s, 3),
            "requests_per_s": round(len(ok) / wall_s, 3), "tokens": tokens,
            "tokens_per_s": round(tokens / wall_s, 2),
            "latency_ms": percentiles_ms([r["latency_s"] for r in ok]),
            "ttft_ms": percentiles_ms([r["ttft_s"] for r in ok])}


def engine_runner():
    """A function that runs one request in an in-process engine (no HTTP, no queue) and
    returns its token count."""
    sys.path.insert(0, str(ROOT))
    from specops.config import Settings
    from specops.engine.sampling_params import SamplingParams
    from specops.loader import load_engine

    engine = load_engine(Settings())

    def run(body: dict) -> int:
        params = SamplingParams(max_new_tokens=body["max_new_tokens"], speculator=body["speculator"],
                                k_draft=body["k_draft"], ignore_eos=body.get("ignore_eos", False))
        return len(engine.generate(engine.tokenizer.encode(body["prompt"]), params).token_ids)
    return run


async def paired_rounds(url: str, bodies: list[dict], headers: dict, stream: bool, rounds: int,
                        run_engine) -> dict:
    """One client: each request runs in the engine, then through HTTP, back to back, so that
    both see the same machine (shared machines drift over seconds). Per round, tokens/s of each
    side; the ratio is the median over rounds."""
    request = one_request if stream else one_plain_request
    per_round = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
        run_engine(bodies[0])
        await request(client, bodies[0])  # warm-up, not counted
        for _ in range(rounds):
            engine_s = http_s = 0.0
            engine_tokens = http_tokens = errors = 0
            for body in bodies:
                t0 = time.perf_counter()
                engine_tokens += run_engine(body)
                t1 = time.perf_counter()
                reply = await request(client, body)
                http_s += time.perf_counter() - t1
                engine_s += t1 - t0
                errors += "error" in reply
                http_tokens += reply.get("tokens", 0)
            per_round.append({"engine_tokens_per_s": round(engine_tokens / engine_s, 2),
                              "http_tokens_per_s": round(http_tokens / http_s, 2),
                              "ratio": round(engine_s / http_s * http_tokens / max(engine_tokens, 1), 3),
                              "errors": errors})
    return {"rounds": per_round, "errors": sum(r["errors"] for r in per_round),
            "http_over_engine": round(float(np.median([r["ratio"] for r in per_round])), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8888")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--speculator", default="auto", choices=("none", "ngram", "draft", "hybrid", "auto"))
    ap.add_argument("--k-draft", type=int, default=4)
    ap.add_argument("--prompts", type=Path, default=ROOT / "prompts" / "free.jsonl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--api-key", default="")
    ap.add_argument("--engine-baseline", action="store_true", help="one client: time each request in an "
                    "in-process engine and through HTTP, back to back, and report the ratio")
    ap.add_argument("--no-stream", action="store_true", help="plain JSON requests (TTFT from the server)")
    ap.add_argument("--rounds", type=int, default=3, help="with --engine-baseline: rounds over the requests; "
                    "the ratio is their median (shared machines are noisy)")
    args = ap.parse_args()

    bodies = [{"prompt": p, "max_new_tokens": args.max_new_tokens, "speculator": args.speculator,
               "k_draft": args.k_draft, "temperature": 0.0}
              for p in load_prompts(args.prompts, args.requests, args.seed)]
    report = {"clients": args.clients, "requests": args.requests, "max_new_tokens": args.max_new_tokens,
              "speculator": args.speculator, "k_draft": args.k_draft, "prompts": args.prompts.name,
              "stream": not args.no_stream}
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    if args.engine_baseline:  # the server's SPECOPS_* settings must match this process's
        report["clients"] = 1
        report.update(asyncio.run(paired_rounds(args.url, bodies, headers, not args.no_stream, args.rounds,
                                                engine_runner())))
        print(json.dumps(report))
        return 0 if report["errors"] == 0 else 1
    results, wall = asyncio.run(run_clients(args.url, bodies, args.clients, headers, stream=not args.no_stream))
    report["http"] = summarize(results, wall)
    print(json.dumps(report))
    return 0 if report["http"]["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
