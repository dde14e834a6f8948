"""`specops bench serve`: the service under N concurrent clients (a benchmark, not a test).

    specops bench serve --url http://127.0.0.1:8888 --clients 8 --requests 64     # a running server
    specops bench serve --batch 8 --clients 8 --requests 16 --ignore-eos [--openvino]
    specops bench serve --url http://127.0.0.1:8888 --engine-baseline --rounds 5

Without --url it starts the service itself (`python -m specops serve` on a free port, this
environment's SPECOPS_* settings) twice, with SPECOPS_MAX_BATCH=1 and then =--batch, and compares
them: continuous batching against one request at a time. Each time 1 client and then --clients
clients send the same --requests requests. Each request streams /generate (time to first token is
seen by the client; --no-stream sends plain requests and takes TTFT from the server's reply); chat
prompts of the set go through the target's chat template. Reported: requests/s, tokens/s, latency
and TTFT percentiles (ms), errors by kind. --openvino adds OpenVINO GenAI on the same weights and
prompts, all in one generate call (its continuous batching) and one at a time
(scripts/peers/setup_peers.sh). --ignore-eos: every request, ours and OpenVINO's, generates exactly
--max-new-tokens, so tokens/s compare equal lengths.

With --engine-baseline (and --url) the same requests also run through an in-process engine (the
server's SPECOPS_* settings must match), one client, each request in the engine then through HTTP
back to back: the engine's own tokens/s and the HTTP/engine ratio (median over --rounds). Greedy,
fixed prompt order: runs are comparable. Prints one JSON line (--json writes it).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from .measure import emit_report, load_prompt_items, prompt_text, run_record


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
    from ..config import Settings
    from ..engine.sampling_params import SamplingParams
    from ..loader import load_engine

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


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--url", help="a running server (default: start one, with max_batch 1 and then --batch)")
    ap.add_argument("--batch", type=int, default=8, help="without --url: the max_batch compared with 1")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (1 client runs first)")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--speculator", default="auto", choices=("none", "ngram", "draft", "hybrid", "auto"))
    ap.add_argument("--k-draft", type=int, default=8)
    ap.add_argument("--set", default="chat_real", help="prompt set (prompts/<set>.jsonl)")
    ap.add_argument("--ignore-eos", action="store_true", help="every request generates exactly --max-new-tokens")
    ap.add_argument("--openvino", action="store_true", help="also OpenVINO GenAI (scripts/peers/setup_peers.sh)")
    ap.add_argument("--no-stream", action="store_true", help="plain JSON requests (TTFT from the server)")
    ap.add_argument("--engine-baseline", action="store_true", help="with --url, one client: time each request "
                    "in an in-process engine and through HTTP, back to back, and report the ratio")
    ap.add_argument("--rounds", type=int, default=3, help="with --engine-baseline: rounds over the requests; "
                    "the ratio is their median (shared machines are noisy)")
    ap.add_argument("--api-key", default="")
    ap.add_argument("--json", type=Path, help="also write the report here")


def request_texts(set_name: str, count: int) -> list[str]:
    """`count` prompts of the set in order (repeating); chat prompts through the target's template."""
    from ..config import Settings
    from ..loader import local_paths
    from ..runtime.tokenizer import TextTokenizer

    tokenizer = TextTokenizer(local_paths(Settings()).target_tokenizer)
    items = load_prompt_items(set_name)
    return [prompt_text(items[i % len(items)], tokenizer) for i in range(count)]


# -- a server of our own ------------------------------------------------------------------------------
class Server:
    """`python -m specops serve` on 127.0.0.1:<free port> with `env` on top of this environment,
    its output in a log file (its tail is shown if it fails); stopped with SIGTERM (it drains)."""

    def __init__(self, env: dict[str, str]):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log = Path(tempfile.mkstemp(prefix="specops-bench-server-", suffix=".log")[1])
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "specops", "serve", "--host", "127.0.0.1",
                                          "--port", str(port)], env={**os.environ, **env}, stdout=log,
                                         stderr=subprocess.STDOUT)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def wait_ready(self, timeout: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode} before it was ready:\n"
                                   f"{self.tail()}")
            try:
                body = httpx.get(self.url + "/health", timeout=5).json()
                if body["status"] == "ready":
                    return body
                if body["status"] == "failed":
                    raise RuntimeError(f"the server failed to start: {body.get('reason')}\n{self.tail()}")
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the server was not ready after {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.unlink(missing_ok=True)


def batch_metrics(url: str) -> dict:
    text = httpx.get(url + "/metrics", timeout=10).text
    value = (lambda name: next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(name)), None))
    return {"batch_size_sum": value("specops_batch_size_sum"), "batch_size_count": value("specops_batch_size_count")}


def load(url: str, bodies: list[dict], clients: list[int], headers: dict, stream: bool) -> dict:
    out = {}
    for c in clients:
        results, wall = asyncio.run(run_clients(url, bodies, c, headers, stream=stream))
        out[f"clients_{c}"] = summarize(results, wall)
    return out


def serve_and_load(env: dict, bodies: list[dict], clients: list[int], stream: bool) -> dict:
    server = Server(env)
    try:
        health = server.wait_ready()
        return {"memory": health["models"]["memory"], **load(server.url, bodies, clients, {}, stream),
                **batch_metrics(server.url)}
    finally:
        server.stop()


def openvino(texts: list[str], max_new_tokens: int, ignore_eos: bool) -> dict:
    from .speculators import peers_on_path

    peers_on_path()
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


def compare_batches(report: dict, args: argparse.Namespace) -> dict:
    b1, bn = report["b1"], report[f"b{args.batch}"]
    many, one = f"clients_{args.clients}", "clients_1"
    return {
        f"{many}_tok_s_vs_b1": round(bn[many]["tokens_per_s"] / b1[many]["tokens_per_s"], 3),
        f"{many}_p50_latency_vs_b1": round(bn[many]["latency_ms"]["p50"] / b1[many]["latency_ms"]["p50"], 3),
        f"{one}_tok_s_vs_b1": round(bn[one]["tokens_per_s"] / b1[one]["tokens_per_s"], 3),
        "mean_batch_size": round(bn["batch_size_sum"] / bn["batch_size_count"], 2) if bn["batch_size_count"] else None,
    }


def main(args: argparse.Namespace) -> int:
    if args.engine_baseline and not args.url:
        raise ValueError("--engine-baseline compares a running server (--url) with an in-process engine")
    texts = request_texts(args.set, args.requests)
    bodies = [{"prompt": t, "max_new_tokens": args.max_new_tokens, "speculator": args.speculator,
               "k_draft": args.k_draft, "temperature": 0.0, "ignore_eos": args.ignore_eos} for t in texts]
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    clients = sorted({1, args.clients})
    report = {"bench": "serve", "run": run_record(args.command_line), "requests": args.requests,
              "max_new_tokens": args.max_new_tokens, "speculator": args.speculator, "k_draft": args.k_draft,
              "set": args.set, "ignore_eos": args.ignore_eos, "stream": not args.no_stream}
    if args.engine_baseline:
        report.update(asyncio.run(paired_rounds(args.url, bodies, headers, not args.no_stream, args.rounds,
                                                engine_runner())))
    elif args.url:
        report["http"] = {**load(args.url, bodies, clients, headers, not args.no_stream), **batch_metrics(args.url)}
    else:
        env = {"SPECOPS_QUEUE_SIZE": str(args.requests + 8)}
        for batch in sorted({1, args.batch}):
            report[f"b{batch}"] = serve_and_load({**env, "SPECOPS_MAX_BATCH": str(batch)}, bodies, clients,
                                                 not args.no_stream)
        if args.batch != 1 and args.clients != 1:
            report["ratios"] = compare_batches(report, args)
    if args.openvino:
        report["openvino"] = openvino(texts[:args.clients], args.max_new_tokens, args.ignore_eos)
        if "ratios" in report:
            report["ratios"][f"clients_{args.clients}_tok_s_vs_openvino_batched"] = round(
                report[f"b{args.batch}"][f"clients_{args.clients}"]["tokens_per_s"]
                / report["openvino"]["batched_tok_s"], 3)
    emit_report(report, args.json)
    errors = sum(v.get("errors", 0) for part in report.values() if isinstance(part, dict)
                 for v in part.values() if isinstance(v, dict))
    return 0 if errors == 0 and not report.get("errors") else 1
