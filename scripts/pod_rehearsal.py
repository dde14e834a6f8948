#!/usr/bin/env python
"""Rehearse the Deployment's pod on this host: `uvicorn main:app` with the manifest's own
environment, inside a memory cgroup of the manifest's limit and its CPU quota, under a mixed
load for N minutes; one JSON report.

    sudo python scripts/pod_rehearsal.py --minutes 3 \\
        --env SPECOPS_TARGET_MODEL=build/shapes-full/phi3-mini-int4 \\
        --env SPECOPS_DRAFT_MODEL=build/shapes-full/tinyllama-int4 --json build/rehearsal.json

The environment is the `specops` container's `env` in infra/k8s_deployment.yaml (a
`resourceFieldRef` to limits.memory becomes the limit in bytes, as the kubelet fills it);
`--env KEY=VALUE` overrides one variable, `--map /models=DIR` rewrites path prefixes (defaults:
/models -> build/shapes-full, /cache -> build/rehearsal-cache, which persists so that tiles
written once are reused), `--no-downward-limit` drops SPECOPS_MEMORY_LIMIT_BYTES so the service
must find the limit in its own cgroup. The model folders' (and kernel cache's) page cache is
dropped first, so the pod's cgroup is charged for reading them as a fresh pod would be. The
cgroup (scripts/pod_cgroup.py: v2 where the unified hierarchy has the memory controller, else
v1) needs root; where none can be made the script says why and exits 2.

Load (scripts/pod_load.py): --clients loops of a mix (streamed /generate, streamed and plain chat,
a prompt of half the context cap, a stream left after 3 tokens), ignore_eos; with
`--speculators none,ngram,auto` the requests name them in turn (interleaved in one run). Reported:
ready time, the plan (/health: context cap, max_batch, need, notes) and the kernel; the cgroup at
ready (kernel peak while loading; anon, page cache, mapped file) and under load (peak, the
sample at the peak), OOM kills, limit hits (v1 memory.failcnt, v2 memory.events max), major
faults per generated token (the cgroup's pgmajfault over the server's generated-token counter),
tok/s, TTFT and latency percentiles by kind; by speculator: decode tok/s per request, TTFT, and
the server's tokens per target pass; errors. Exit 0 when the server served the whole run without
an OOM kill or 5xx.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
from pod_cgroup import Sandbox, SandboxError  # noqa: E402
from specops.bench.measure import run_record  # noqa: E402
from pod_load import counts_delta, drive, load_summary, long_prompt, server_counts  # noqa: E402

MiB = 1 << 20
UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6, "G": 10**9, "": 1}


# -- the manifest ----------------------------------------------------------------------------
def parse_quantity(text: str) -> float:
    """Kubernetes quantities: "4Gi" -> 4294967296, "2" -> 2, "500m" -> 0.5."""
    m = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G)?", str(text).strip())
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    number, unit = float(m.group(1)), m.group(2) or ""
    return number / 1000 if unit == "m" else number * UNITS[unit]


def pod_from_manifest(path: Path, container: str = "specops") -> dict:
    """{"env": {name: value}, "memory_bytes": int, "cpus": float} of the Deployment's container."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "Deployment"]
    spec = next(c for d in docs for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == container)
    limits = spec["resources"]["limits"]
    memory, cpus = int(parse_quantity(limits["memory"])), parse_quantity(limits["cpu"])
    env = {}
    for item in spec.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif item.get("valueFrom", {}).get("resourceFieldRef", {}).get("resource") == "limits.memory":
            env[item["name"]] = str(memory)
        else:
            raise ValueError(f"{path}: env {item['name']} comes from {item.get('valueFrom')}: give it with --env")
    return {"env": env, "memory_bytes": memory, "cpus": cpus}


def server_env(pod: dict, overrides: list[str], maps: list[str], downward_limit: bool) -> dict:
    env = dict(pod["env"])
    for m in maps:
        prefix, _, target = m.partition("=")
        env = {k: (str(Path(target).resolve()) + v[len(prefix):] if v.startswith(prefix) else v) for k, v in env.items()}
    for o in overrides:
        key, _, value = o.partition("=")
        env[key] = value
    if not downward_limit:
        env.pop("SPECOPS_MEMORY_LIMIT_BYTES", None)
    return env


# -- the server in its cgroup ----------------------------------------------------------------
def evict_page_cache(env: dict) -> int:
    """Drop the model folders' clean, unmapped pages from the page cache (posix_fadvise
    DONTNEED), so the server's cgroup is charged for reading them as a fresh pod's would be: a
    page stays charged to the cgroup that first read it (a build or an earlier run here).
    Returns the bytes of the files advised."""
    total = 0
    for key in ("SPECOPS_TARGET_MODEL", "SPECOPS_DRAFT_MODEL", "SPECOPS_KERNEL_CACHE_DIR"):
        folder = Path(env.get(key, ""))
        if not env.get(key) or env[key] == "none" or not folder.is_dir():
            continue
        for path in (p for p in folder.rglob("*") if p.is_file()):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += path.stat().st_size
            finally:
                os.close(fd)
    return total



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sampler(threading.Thread):
    """The cgroup's counters every `every` seconds (kept in memory: a few per second)."""

    def __init__(self, box: Sandbox, every: float = 0.25):
        super().__init__(daemon=True)
        self.box, self.every, self.samples, self.stop = box, every, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append(self.box.counters())
            except OSError:
                pass
            self.stop.wait(self.every)

    def since(self, t: float) -> list[dict]:
        return [s for s in self.samples if s["t"] >= t]


def memory_view(samples: list[dict], kernel_peak: int | None) -> dict:
    """Peak charged bytes (kernel's and sampled: page cache included, so up to the limit), the
    sample at the sampled peak, and the largest working set (anon + mapped file), MiB."""
    if not samples:
        return {}
    top = max(samples, key=lambda s: s["usage"])
    mib = lambda b: None if b is None else round(b / MiB, 1)  # noqa: E731
    return {"peak_mib": mib(kernel_peak), "sampled_peak_mib": mib(top["usage"]),
            "at_sampled_peak_mib": {k: mib(top[k]) for k in ("anon", "file", "mapped_file")},
            "max_anon_mib": mib(max(s["anon"] for s in samples)),
            # the working set that must stay resident: anonymous pages plus mapped files (page
            # cache that is not mapped is reclaimed first and fills whatever the limit leaves)
            "max_anon_plus_mapped_mib": mib(max(s["anon"] + s["mapped_file"] for s in samples)),
            "max_mapped_file_mib": mib(max(s["mapped_file"] for s in samples)),
            "end_mib": {k: mib(samples[-1][k]) for k in ("usage", "anon", "file", "mapped_file")}}


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> dict:
    """Poll /health until ready (200), failed, the process exits, or the timeout."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            return {"status": "exited", "returncode": proc.returncode}
        try:
            r = httpx.get(url + "/health", timeout=2)
            body = r.json()
            if r.status_code == 200 or body.get("status") == "failed":
                return body
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    return {"status": "timeout"}


def generated_tokens(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("specops_generated_tokens_total"))


# -- the run ---------------------------------------------------------------------------------
def rehearse(env: dict, memory_bytes: int, cpus: float, minutes: float, clients: int, new_tokens: int,
             ready_timeout_s: float, seed: int = 0, speculators: tuple[str, ...] = (), port: int | None = None) -> dict:
    evicted = evict_page_cache(env)
    box = Sandbox.create("specops-rehearsal", memory_bytes, cpus)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile("w+", prefix="rehearsal-", suffix=".log", delete=False)
    sampler = Sampler(box)
    sampler.start()
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=box.enter)
    report: dict = {"cgroup": {"version": box.version, "memory_dir": str(box.memory_dir),
                               "limit_mib": round(memory_bytes / MiB, 1), "cpus": cpus},
                    "server_log": log.name, "page_cache_evicted_mib": round(evicted / MiB, 1),
                    "loadavg": {"start": os.getloadavg()}}
    try:
        health = wait_ready(url, proc, ready_timeout_s)
        t_ready = time.monotonic()
        report["loadavg"]["ready"] = os.getloadavg()
        at_ready = box.counters()
        report["ready_s"] = round(t_ready - t0, 1) if health.get("status") == "ready" else None
        report["health"] = health
        report["at_load"] = memory_view(sampler.samples, at_ready["peak"])
        if report["ready_s"] is None:
            return report
        models = health.get("models", {})
        plan = models.get("memory", {})
        report["plan"] = {k: plan.get(k) for k in ("context_cap", "max_batch", "need_mib", "limit_mib", "steady_mib",
                                                   "load_peak_mib", "items_mib", "notes")}
        report["kernel"] = models.get("kernel")
        box.reset_peak()
        tokenizer = ROOT / env["SPECOPS_TARGET_MODEL"] / "tokenizer.json"  # an absolute path stays itself
        text = long_prompt(tokenizer, max(16, (plan.get("context_cap") or 512) // 2))
        tokens0, faults0, t_load = generated_tokens(url), box.counters()["pgmajfault"], time.monotonic()
        counts0 = server_counts(url)
        results = asyncio.run(drive(url, clients, minutes * 60, text, new_tokens, seed, speculators))
        load_s = time.monotonic() - t_load
        report["loadavg"]["end"] = os.getloadavg()
        end = box.counters()
        alive = proc.poll() is None
        tokens = generated_tokens(url) - tokens0 if alive else None
        counts = counts_delta(counts0, server_counts(url)) if alive else None
        faults = end["pgmajfault"] - faults0
        report["load"] = {"seconds": round(load_s, 1), "clients": clients, "generated_tokens": tokens,
                          "tokens_per_s": round(tokens / load_s, 2) if tokens else None,
                          "major_faults": faults,
                          "major_faults_per_token": round(faults / tokens, 3) if tokens else None,
                          **load_summary(results), "server_by_speculator": counts}
        report["under_load"] = memory_view(sampler.since(t_load), end["peak"] if box.version == 1 else None)
        report["oom_kills"], report["limit_hits"] = end["oom_kill"], end["limit_hits"]
        report["server_alive"] = alive
        return report
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        report["returncode"] = proc.returncode
        sampler.stop.set()
        sampler.join()
        final = box.counters()
        report["oom_kills"], report["limit_hits"] = final["oom_kill"], final["limit_hits"]
        box.remove()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, default=ROOT / "infra" / "k8s_deployment.yaml")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="override one variable")
    p.add_argument("--map", action="append", default=[], metavar="PREFIX=DIR",
                   help="rewrite a path prefix (defaults: /models=build/shapes-full, /cache=build/rehearsal-cache)")
    p.add_argument("--no-downward-limit", action="store_true",
                   help="drop SPECOPS_MEMORY_LIMIT_BYTES: the service must read its own cgroup's limit")
    p.add_argument("--memory", help="the cgroup's limit instead of the manifest's (e.g. 5Gi)")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--speculators", default="", help="comma-separated; requests name them in turn (none,ngram,auto)")
    p.add_argument("--port", type=int, help="the server's port (default: a free one)")
    p.add_argument("--label", default="", help="the run's name in docs' tables (e.g. stock path)")
    p.add_argument("--ready-timeout-s", type=float, default=900)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    pod = pod_from_manifest(args.manifest)
    memory = int(parse_quantity(args.memory)) if args.memory else pod["memory_bytes"]
    maps = args.map + [f"/models={ROOT / 'build' / 'shapes-full'}", f"/cache={ROOT / 'build' / 'rehearsal-cache'}"]
    env = server_env({**pod, "env": {**pod["env"], **({"SPECOPS_MEMORY_LIMIT_BYTES": str(memory)}
                                                      if "SPECOPS_MEMORY_LIMIT_BYTES" in pod["env"] else {})}},
                     args.env, maps, not args.no_downward_limit)
    try:
        report = rehearse(env, memory, pod["cpus"], args.minutes, args.clients, args.new_tokens, args.ready_timeout_s,
                          speculators=tuple(x for x in args.speculators.split(",") if x), port=args.port)
    except SandboxError as err:
        print(f"pod_rehearsal: {err}", file=sys.stderr)
        return 2
    report = {"label": args.label, "run": run_record(["python", *sys.argv]), "manifest": str(args.manifest),
              "env": env, **report}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    ok = report.get("server_alive") and not report.get("oom_kills") and not report.get("load", {}).get("status_5xx")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
