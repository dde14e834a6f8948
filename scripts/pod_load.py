"""The mixed load scripts/pod_rehearsal.py drives, and its summary.

--clients loops, each request a kind picked at random (streamed /generate, streamed and plain
chat, a prompt of half the context cap, a stream left after 3 tokens), ignore_eos everywhere, and
with `speculators` each request names the next one of them (`"speculator"` is a request field,
so none / ngram / auto interleave in one run against one server). Per request: status, latency,
TTFT (first streamed event with text), completion tokens, and the decode rate (tokens after
the first over the time after it). Summaries by kind and by speculator, plus the server's own
counters by speculator (tokens, target passes: tokens per jump).
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["Write a haiku about the sea.", "def fibonacci(n):\n", "Explain what a hash table is.",
         "The capital of France is", "List three prime numbers.", "import os\nimport sys\n\n\ndef main():\n"]
KINDS = ("stream", "chat_stream", "chat_plain", "long", "disconnect")


def long_prompt(tokenizer_file: Path, tokens: int) -> str:
    """Text of about `tokens` tokens of the served tokenizer (the README, repeated if short)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    ids = tok.encode((ROOT / "README.md").read_text()).ids
    while len(ids) < tokens:
        ids = ids + ids
    return tok.decode(ids[:tokens])


def request_for(kind: str, rng: random.Random, long_text: str, new_tokens: int,
                speculator: str | None = None) -> tuple[str, dict]:
    short = rng.choice(SHORT)
    chat = {"messages": [{"role": "user", "content": short}], "max_tokens": new_tokens, "ignore_eos": True,
            "temperature": 0}
    path, body = {
        "stream": ("/generate", {"prompt": short, "max_new_tokens": new_tokens, "ignore_eos": True, "stream": True}),
        "chat_stream": ("/v1/chat/completions", {**chat, "stream": True, "stream_options": {"include_usage": True}}),
        "chat_plain": ("/v1/chat/completions", {**chat, "max_tokens": new_tokens // 2}),
        "long": ("/generate", {"prompt": long_text, "max_new_tokens": new_tokens // 2, "ignore_eos": True,
                               "stream": True}),
        "disconnect": ("/generate", {"prompt": short, "max_new_tokens": new_tokens * 2, "ignore_eos": True,
                                     "stream": True}),
    }[kind]
    return path, ({**body, "speculator": speculator} if speculator else body)


def _completion_tokens(event: dict) -> int | None:
    """usage.completion_tokens of a final event (/generate's done, a chat chunk with usage)."""
    usage = event.get("usage") or {}
    return usage.get("completion_tokens")


async def one(client: httpx.AsyncClient, kind: str, path: str, body: dict) -> dict:
    """One request: latency, TTFT, completion tokens, or the error."""
    t0 = time.perf_counter()
    tag = {"kind": kind, "speculator": body.get("speculator")}
    if not body.get("stream"):
        r = await client.post(path, json=body)
        out = {**tag, "status": r.status_code, "latency_s": time.perf_counter() - t0}
        return {**out, "tokens": _completion_tokens(r.json())} if r.status_code == 200 else {**out, "error": r.text[:200]}
    ttft, events, tokens = None, 0, None
    async with client.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            return {**tag, "status": r.status_code, "error": (await r.aread())[:200].decode(errors="replace")}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            tokens = _completion_tokens(event) or tokens
            has_text = event.get("type") == "token" or any(
                c.get("delta", {}).get("content") for c in event.get("choices", []))
            if has_text:
                events += 1
                ttft = ttft if ttft is not None else time.perf_counter() - t0
            if kind == "disconnect" and events >= 3:
                break  # leave mid-stream: the server must cancel this generation only
    return {**tag, "status": 200, "latency_s": time.perf_counter() - t0, "ttft_s": ttft, "tokens": tokens}


async def drive(url: str, clients: int, seconds: float, long_text: str, new_tokens: int, seed: int,
                speculators: tuple[str, ...] = ()) -> list[dict]:
    """`clients` loops for `seconds`; client i's n-th request names speculators[(i + n) % len]."""
    results: list[dict] = []
    end = time.monotonic() + seconds

    async def loop(i: int) -> None:
        rng = random.Random(seed + i)
        async with httpx.AsyncClient(base_url=url, timeout=600) as client:
            n = 0
            while time.monotonic() < end:
                kind = rng.choice(KINDS)
                speculator = speculators[(i + n) % len(speculators)] if speculators else None
                path, body = request_for(kind, rng, long_text, new_tokens, speculator)
                n += 1
                try:
                    results.append(await one(client, kind, path, body))
                except httpx.HTTPError as err:
                    results.append({"kind": kind, "speculator": speculator, "error": type(err).__name__})
                if results[-1].get("status") == 429:
                    await asyncio.sleep(1.0)

    await asyncio.gather(*(loop(i) for i in range(clients)))
    return results


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    p = np.percentile(np.array(values), [50, 90, 99])
    return {"p50": round(float(p[0]), 3), "p90": round(float(p[1]), 3), "p99": round(float(p[2]), 3), "n": len(values)}


def _decoded(r: dict) -> bool:
    """A finished streamed request whose decode rate can be read: > 1 token, time after the first."""
    return (r["kind"] != "disconnect" and (r.get("tokens") or 0) > 1 and r.get("ttft_s") is not None
            and r["latency_s"] > r["ttft_s"])


def by_speculator(results: list[dict]) -> dict:
    """Per speculator named by the requests: tokens, TTFT, and the decode rate per request
    (median etc.) and pooled (tokens after the first / decoding time, over all its requests)."""
    out = {}
    order = ("none", "ngram", "draft", "hybrid", "auto")
    named = {r["speculator"] for r in results if r.get("speculator")}
    for name in sorted(named, key=lambda n: (order.index(n) if n in order else len(order), n)):
        ok = [r for r in results if r.get("speculator") == name and "error" not in r]
        timed = [r for r in ok if _decoded(r)]
        decode_s = sum(r["latency_s"] - r["ttft_s"] for r in timed)
        out[name] = {"requests": len(ok), "tokens": sum(r.get("tokens") or 0 for r in ok),
                     "decode_tok_s": percentiles([(r["tokens"] - 1) / (r["latency_s"] - r["ttft_s"]) for r in timed]),
                     "decode_tok_s_pooled": round(sum(r["tokens"] - 1 for r in timed) / decode_s, 3) if timed else None,
                     "ttft_s": percentiles([r["ttft_s"] for r in ok if r.get("ttft_s") is not None])}
    return out


def load_summary(results: list[dict]) -> dict:
    by_kind = {}
    for kind in KINDS:
        rs = [r for r in results if r["kind"] == kind]
        ok = [r for r in rs if "error" not in r]
        by_kind[kind] = {"requests": len(rs), "errors": len(rs) - len(ok),
                         "latency_s": percentiles([r["latency_s"] for r in ok]),
                         "ttft_s": percentiles([r["ttft_s"] for r in ok if r.get("ttft_s") is not None])}
    errors = [r for r in results if "error" in r]
    return {"requests": len(results), "errors": len(errors), "status_5xx": sum(r.get("status", 0) >= 500 for r in results),
            "first_errors": [f"{r['kind']}: {r.get('status')} {r['error']}" for r in errors[:5]],
            "ttft_s": percentiles([r["ttft_s"] for r in results if r.get("ttft_s") is not None]),
            "latency_s": percentiles([r["latency_s"] for r in results if "error" not in r and r["kind"] != "disconnect"]),
            "by_kind": by_kind, "by_speculator": by_speculator(results)}


def server_counts(url: str) -> dict[str, dict[str, float]]:
    """The server's counters by speculator label: generated tokens and target passes."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, dict[str, float]] = {}
    names = {"specops_generated_tokens": "tokens", "specops_target_passes": "passes"}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.removesuffix("_total") in names and "speculator" in s.labels:
                key = names[s.name.removesuffix("_total")]
                out.setdefault(s.labels["speculator"], {"tokens": 0.0, "passes": 0.0})[key] += s.value
    return out


def counts_delta(before: dict, after: dict) -> dict:
    """Tokens, passes and tokens per pass by speculator over the load."""
    out = {}
    for name, now in after.items():
        was = before.get(name, {"tokens": 0.0, "passes": 0.0})
        tokens, passes = now["tokens"] - was["tokens"], now["passes"] - was["passes"]
        if tokens:
            out[name] = {"tokens": tokens, "target_passes": passes,
                         "tokens_per_pass": round(tokens / passes, 3) if passes else None}
    return out
