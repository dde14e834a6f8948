"""Soak test against a running SpecOps server: N clients for T minutes, then a verdict.

    specops bench soak --url http://127.0.0.1:8888 --clients 8 --minutes 10 --json soak.json

Each client loops over a mix of requests: plain and streaming, on /generate and
/v1/chat/completions; streams it leaves after the first events (a client disconnecting
mid-stream); malformed requests (each must be refused with a 4xx). Every --burst-every
seconds a burst of --burst-size short requests at once goes over the queue limit: each is
answered 200 or 429, and every 429 must carry Retry-After. A client told 429 waits as asked
(at most 5 s).

Reported (one JSON document, on stdout and in --json): requests by outcome and by kind, the
HTTP statuses, 5xx count, requests lost (sent but never answered: a timeout or a dropped
connection with no status), per --window-s window (a minute by default) the p50/p95/p99
latency of completed requests and the server's RSS, open file descriptors and threads, and
the `checks` with their verdict.

The server's process: --pid, or else found from the port: the process holding the listening
socket of --url's port in /proc/net/tcp{,6} (so the server must run on this host, in this
PID namespace, and its /proc/<pid>/fd be readable), cross-checked with the pid /health/live
reports. Its RSS, fds and threads come from /proc/<pid>/status and /proc/<pid>/fd every
--sample-s seconds. File descriptors and threads are compared while idle (before the load,
after a warm-up of every kind of request, and after it, once every client has closed its
connections), since open connections are fds; RSS is compared at the end of the first
window and at the end of the run. --warmup-s runs the same load before the clock starts (a
short run's first window alone is too short for the allocators and onnxruntime's arena to
reach their working size); its requests are counted and checked like the others.

Exit code 0 when every check passes: 0 5xx, 0 lost or unsent, 0 broken streams, every 429
with Retry-After, no malformed request accepted, RSS growth after the first window < 5%, fds
at most +2 and threads at most +1 after the run. `run_soak()` and `check()` are importable
(tests/test_soak.py uses them).
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np

PROMPTS = ["def fibonacci(n):\n", "import os\nimport sys\n\n\ndef main():\n", "class Stack:\n    def __init__(self):\n",
           "Write a haiku about the sea.", "The capital of France is", "1, 2, 3, 4, 5,",
           "def read_config(path):\n", "Explain what a hash table is in one paragraph."]

# (name, path, body bytes or JSON); each must be refused with a 4xx
MALFORMED = [
    ("bad_json", "/generate", b'{"prompt": "x", '),
    ("zero_tokens", "/generate", {"prompt": "x", "max_new_tokens": 0}),
    ("prompt_not_text", "/generate", {"prompt": 123}),
    ("bool_as_number", "/generate", {"prompt": "x", "max_new_tokens": True}),
    ("unknown_field", "/generate", {"prompt": "x", "no_such_field": 1}),
    ("temperature_text", "/generate", {"prompt": "x", "temperature": "hot"}),
    ("no_messages", "/v1/chat/completions", {"messages": []}),
    ("bad_role", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}),
    ("not_json", "/v1/chat/completions", b"messages=hello"),
    ("huge_body", "/generate", None),  # built at run time: over the default 1 MiB body limit
]

# kind -> weight in each client's mix
MIX = {"generate": 3, "generate_stream": 2, "chat": 2, "chat_stream": 2, "disconnect": 1, "malformed": 1}


@dataclass
class Record:
    kind: str
    outcome: str  # ok, disconnected, rejected (expected 4xx), http_<status>, lost, unsent, stream_broken, ...
    status: int | None
    started: float  # seconds since the start of the run
    latency_s: float
    retry_after: str | None = None
    detail: str = ""


@dataclass
class Soak:
    url: str
    clients: int
    duration_s: float
    pid: int
    max_new_tokens: int = 32
    bucket_s: float = 60.0
    sample_s: float = 5.0
    burst_every_s: float = 30.0
    burst_size: int = 40
    request_timeout_s: float = 120.0
    warmup_s: float = 0.0
    headers: dict = field(default_factory=dict)
    seed: int = 0
    records: list[Record] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    t0: float = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    # -- one request of each kind -------------------------------------------------------------
    async def request(self, client: httpx.AsyncClient, kind: str, rng: random.Random) -> Record:
        start = self.now()
        prompt = rng.choice(PROMPTS)
        tokens = rng.randint(4, self.max_new_tokens)
        try:
            if kind == "malformed":
                return await self._malformed(client, rng, start)
            if kind in ("generate", "burst"):
                body = {"prompt": prompt, "max_new_tokens": 4 if kind == "burst" else tokens}
                return self._plain(kind, await client.post("/generate", json=body), start)
            if kind == "chat":
                body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": tokens, "temperature": 0}
                return self._plain(kind, await client.post("/v1/chat/completions", json=body), start)
            if kind == "generate_stream":
                return await self._stream(client, kind, "/generate",
                                          {"prompt": prompt, "max_new_tokens": tokens}, start)
            if kind == "chat_stream":
                return await self._stream(client, kind, "/v1/chat/completions",
                                          {"messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
                                           "temperature": 0}, start)
            if kind == "disconnect":
                path, body = rng.choice([("/generate", {"prompt": prompt}),
                                         ("/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}]})])
                body["max_tokens" if path.startswith("/v1") else "max_new_tokens"] = max(64, self.max_new_tokens * 2)
                return await self._stream(client, kind, path, body, start, leave_after=rng.randint(1, 3))
            raise ValueError(kind)
        except httpx.TimeoutException as err:
            return Record(kind, "lost", None, start, self.now() - start, detail=type(err).__name__)
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            return Record(kind, "unsent", None, start, self.now() - start, detail=f"{type(err).__name__}: {err}")
        except httpx.TransportError as err:  # sent, and the connection dropped with no status
            return Record(kind, "lost", None, start, self.now() - start, detail=f"{type(err).__name__}: {err}")

    def _plain(self, kind: str, r: httpx.Response, start: float) -> Record:
        outcome = "ok" if r.status_code == 200 else f"http_{r.status_code}"
        return Record(kind, outcome, r.status_code, start, self.now() - start, r.headers.get("retry-after"),
                      "" if r.status_code == 200 else r.text[:200])

    async def _stream(self, client: httpx.AsyncClient, kind: str, path: str, body: dict, start: float,
                      leave_after: int | None = None) -> Record:
        events = 0
        async with client.stream("POST", path, json={**body, "stream": True}) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")
                return Record(kind, f"http_{r.status_code}", r.status_code, start, self.now() - start,
                              r.headers.get("retry-after"), text[:200])
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                events += 1
                event = "[DONE]" if line[6:] == "[DONE]" else json.loads(line[6:])
                if event == "[DONE]" or event.get("type") == "done":
                    return Record(kind, "ok", 200, start, self.now() - start)
                if "error" in event or event.get("type") == "error":  # failed after the headers were sent
                    return Record(kind, "stream_error", 200, start, self.now() - start, detail=line[:200])
                if leave_after is not None and events >= leave_after:
                    break  # leaving the block closes the connection mid-stream
            else:
                return Record(kind, "stream_broken", 200, start, self.now() - start,
                              detail=f"ended after {events} events without a done event")
        return Record(kind, "disconnected", 200, start, self.now() - start)

    async def _malformed(self, client: httpx.AsyncClient, rng: random.Random, start: float) -> Record:
        name, path, body = rng.choice(MALFORMED)
        if body is None:
            body = {"prompt": "x" * (1 << 20) + "y"}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = await client.post(path, content=content, headers={"Content-Type": "application/json"})
        if 400 <= r.status_code < 500 and r.status_code != 429:
            outcome = "rejected"
        elif r.status_code < 400:
            outcome = "malformed_accepted"
        else:
            outcome = f"http_{r.status_code}"
        return Record("malformed", outcome, r.status_code, start, self.now() - start, r.headers.get("retry-after"),
                      name if outcome == "rejected" else f"{name}: {r.text[:200]}")

    # -- the load ---------------------------------------------------------------------------------
    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=self.request_timeout_s,
                                 limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))

    async def client_loop(self, index: int, end: float) -> None:
        rng = random.Random(self.seed * 1000 + index)
        kinds, weights = list(MIX), list(MIX.values())
        async with self.client() as client:
            while self.now() < end:
                record = await self.request(client, rng.choices(kinds, weights)[0], rng)
                self.records.append(record)
                if record.status == 429:
                    await asyncio.sleep(min(float(record.retry_after or 1), 5.0))

    async def burst_loop(self, start: float, end: float) -> None:
        rng = random.Random(self.seed - 1)
        next_at = start + min(self.burst_every_s / 2, 10.0)
        while True:
            await asyncio.sleep(max(0.0, next_at - self.now()))
            if self.now() >= end:
                return
            async with self.client() as client:
                burst = [self.request(client, "burst", rng) for _ in range(self.burst_size)]
                self.records.extend(await asyncio.gather(*burst))
            next_at += self.burst_every_s

    async def sample_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.samples.append({"t": round(self.now(), 2), **proc_stats(self.pid)})
            try:
                await asyncio.wait_for(stop.wait(), self.sample_s)
            except asyncio.TimeoutError:
                pass

    async def warm_up(self) -> None:
        """One request of every kind, so lazily made threads, buffers and caches exist before
        the idle baseline."""
        rng = random.Random(-7)
        async with self.client() as client:
            for kind in MIX:
                if kind == "malformed":
                    for _ in range(len(MALFORMED)):
                        await self.request(client, kind, rng)
                else:
                    await self.request(client, kind, rng)

    async def idle_stats(self, settle_s: float = 1.5) -> dict:
        """The server's figures once no client holds a connection (closed connections are
        reaped by the server within a moment)."""
        await asyncio.sleep(settle_s)
        return proc_stats(self.pid)

    async def load(self, start: float, end: float) -> None:
        await asyncio.gather(*(self.client_loop(i, end) for i in range(self.clients)), self.burst_loop(start, end))

    async def run(self) -> dict:
        self.t0 = time.perf_counter()
        await self.warm_up()
        if self.warmup_s > 0:  # the same load, before the clock starts: its requests count, its figures not
            self.t0 = time.perf_counter() + self.warmup_s
            await self.load(-self.warmup_s, 0.0)
        before = await self.idle_stats()
        self.t0 = time.perf_counter()  # the clock of the run starts after the warm-up
        stop = asyncio.Event()
        sampler = asyncio.ensure_future(self.sample_loop(stop))
        await self.load(0.0, self.duration_s)
        wall = self.now()
        stop.set()
        await sampler
        self.samples.append({"t": round(self.now(), 2), **proc_stats(self.pid)})
        after = await self.idle_stats()
        return self.report(wall, before, after)

    # -- the report ---------------------------------------------------------------------------------
    def report(self, wall_s: float, before: dict, after: dict) -> dict:
        outcomes: dict[str, int] = {}
        by_kind: dict[str, dict[str, int]] = {}
        statuses: dict[str, int] = {}
        for r in self.records:
            outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
            kind = by_kind.setdefault(r.kind, {})
            kind[r.outcome] = kind.get(r.outcome, 0) + 1
            if r.status is not None:
                statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
        buckets = max(1, int(np.ceil(wall_s / self.bucket_s)))
        windows = []
        for b in range(buckets):
            lo, hi = b * self.bucket_s, (b + 1) * self.bucket_s
            done = [r.latency_s for r in self.records if r.outcome == "ok" and lo <= r.started + r.latency_s < hi]
            in_window = [s for s in self.samples if lo <= s["t"] < hi] or [s for s in self.samples if s["t"] >= lo][:1]
            window = {"window": b, "from_s": lo, "completed": len(done), **percentiles_ms(done)}
            if in_window:
                last = in_window[-1]
                window.update(rss_mib=round(last["rss_bytes"] / 2**20, 1),
                              rss_max_mib=round(max(s["rss_bytes"] for s in in_window) / 2**20, 1),
                              fds=last["fds"], fds_max=max(s["fds"] for s in in_window),
                              threads=last["threads"], threads_max=max(s["threads"] for s in in_window))
            windows.append(window)
        first = [s for s in self.samples if s["t"] <= self.bucket_s]
        rss_base = first[-1]["rss_bytes"] if first else self.samples[0]["rss_bytes"]
        rss_end = self.samples[-1]["rss_bytes"]
        no_retry_after = [r for r in self.records if r.status == 429 and not r.retry_after]
        failures = [r for r in self.records if r.outcome not in ("ok", "disconnected", "rejected", "http_429")]
        return {
            "url": self.url, "pid": self.pid, "clients": self.clients, "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "wall_s": round(wall_s, 1), "window_s": self.bucket_s, "max_new_tokens": self.max_new_tokens,
            "burst_size": self.burst_size, "burst_every_s": self.burst_every_s,
            "requests": len(self.records), "outcomes": dict(sorted(outcomes.items())),
            "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())},
            "statuses": dict(sorted(statuses.items())),
            "5xx": sum(n for s, n in statuses.items() if s.startswith("5")),
            "lost": outcomes.get("lost", 0), "unsent": outcomes.get("unsent", 0),
            "broken_streams": outcomes.get("stream_broken", 0) + outcomes.get("stream_error", 0),
            "malformed_accepted": outcomes.get("malformed_accepted", 0),
            "429": statuses.get("429", 0), "429_without_retry_after": len(no_retry_after),
            "windows": windows,
            "rss": {"after_first_window_mib": round(rss_base / 2**20, 1), "end_mib": round(rss_end / 2**20, 1),
                    "growth": round(rss_end / rss_base - 1, 4)},
            "idle": {"before": before, "after": after},
            "failure_examples": [r.__dict__ for r in failures[:10]],
        }


def percentiles_ms(values: list[float]) -> dict:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    p = np.percentile(np.array(values) * 1000, [50, 95, 99])
    return {"p50_ms": round(float(p[0]), 1), "p95_ms": round(float(p[1]), 1), "p99_ms": round(float(p[2]), 1)}


def check(report: dict, rss_growth: float = 0.05, fd_slack: int = 2, thread_slack: int = 1) -> list[str]:
    """The soak's verdict: a list of what failed (empty when everything held)."""
    problems = []
    for key in ("5xx", "lost", "unsent", "broken_streams", "malformed_accepted", "429_without_retry_after"):
        if report[key]:
            problems.append(f"{key}: {report[key]}")
    if report["rss"]["growth"] >= rss_growth:
        problems.append(f"RSS grew {report['rss']['growth']:.1%} after the first window "
                        f"({report['rss']['after_first_window_mib']} -> {report['rss']['end_mib']} MiB)")
    before, after = report["idle"]["before"], report["idle"]["after"]
    if after["fds"] > before["fds"] + fd_slack:
        problems.append(f"open fds grew while idle: {before['fds']} -> {after['fds']}")
    if after["threads"] > before["threads"] + thread_slack:
        problems.append(f"threads grew while idle: {before['threads']} -> {after['threads']}")
    if not report["outcomes"].get("ok"):
        problems.append("no request completed")
    return problems


# -- the server's process ---------------------------------------------------------------------------
def proc_stats(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_bytes": int(fields["VmRSS"].split()[0]) * 1024, "threads": int(fields["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":  # 0A: LISTEN
                inodes.add(cols[9])
    return inodes


def pid_from_port(port: int) -> int | None:
    """The process holding the listening socket of `port` (the lowest pid if several do)."""
    targets = {f"socket:[{inode}]" for inode in listening_inodes(port)}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in targets for fd in (entry / "fd").iterdir()):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return min(found) if found else None


def server_pid(url: str, headers: dict) -> int:
    port = urlparse(url).port or (443 if url.startswith("https") else 80)
    pid = pid_from_port(port)
    reported = httpx.get(url + "/health/live", headers=headers, timeout=10).json().get("pid")
    if pid is None:
        raise SystemExit(f"no process on this host listens on port {port} (or its fds are not readable): "
                         "pass --pid")
    if reported is not None and reported != pid:
        raise SystemExit(f"port {port} is held by pid {pid} but /health/live says pid {reported}: pass --pid")
    return pid


def run_soak(url: str, clients: int, minutes: float, pid: int | None = None, **options) -> dict:
    headers = options.pop("headers", {})
    pid = pid or server_pid(url, headers)
    soak = Soak(url.rstrip("/"), clients, minutes * 60, pid, headers=headers, **options)
    report = asyncio.run(soak.run())
    report["problems"] = check(report)
    return report


def add_arguments(ap) -> None:
    ap.add_argument("--url", default="http://127.0.0.1:8888")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--json", type=Path, help="also write the report here")
    ap.add_argument("--pid", type=int, help="the server's pid (default: found from the port, see above)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="upper bound of each request's budget")
    ap.add_argument("--window-s", type=float, default=60.0, help="latency and resources per window (a minute)")
    ap.add_argument("--sample-s", type=float, default=5.0, help="how often RSS, fds and threads are read")
    ap.add_argument("--burst-every-s", type=float, default=30.0)
    ap.add_argument("--burst-size", type=int, default=40, help="requests at once; more than the queue holds")
    ap.add_argument("--request-timeout-s", type=float, default=120.0,
                    help="a request with no answer by then counts as lost")
    ap.add_argument("--warmup-s", type=float, default=0.0, help="the same load for this long before the "
                    "clock starts (its requests are counted and checked; latency and RSS windows start after)")
    ap.add_argument("--api-key", default="")
    ap.add_argument("--seed", type=int, default=0)


def main(args) -> int:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    report = run_soak(args.url, args.clients, args.minutes, args.pid, headers=headers,
                      max_new_tokens=args.max_new_tokens, bucket_s=args.window_s, sample_s=args.sample_s,
                      burst_every_s=args.burst_every_s, burst_size=args.burst_size,
                      request_timeout_s=args.request_timeout_s, warmup_s=args.warmup_s, seed=args.seed)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    for problem in report["problems"]:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if report["problems"] else 0
