#!/usr/bin/env python
"""Client for scripts/peers/peer_worker.py: a peer baseline (llama.cpp, OpenVINO GenAI) running in
its own virtualenv (.peers/*, made by scripts/peers/setup_peers.sh), driven from our main venv
over JSON lines. Standard library only.

Shaped like scripts/peers/ort_genai.py's Runner so that `specops bench speculators` (specops/bench/speculators.py) can take it as a peer:
run_interleaved calls `peer(prompt_ids, max_new_tokens) -> tokens/s`, so pass
`SubprocessPeer(...).tokens_per_second` in its `peers=` dict.

    from peers.subprocess_peer import SubprocessPeer, llama_cpp_peer, openvino_peer
    lp = llama_cpp_peer("lookup", k=4)
    lp.run(ids_or_text, 64)                 # -> {"tokens", "text", "n_tokens", "seconds", "total_seconds", ...}
    lp.tokens_per_second(ids_or_text, 64)   # n_tokens / total_seconds (prefill included), like Runner
    lp.close()

Prompts may be token ids (a list of ints: what run_interleaved passes; the worker feeds them to the
peer as they are, with no re-tokenization, which is exact because the GGUF and the OpenVINO IR carry
the same SmolLM2 vocabulary as our tokenizer) or text (the worker encodes it without adding BOS or
other special tokens, as our engine's tokenizer does with add_special_tokens=False).

tokens_per_second counts prefill, as Runner.tokens_per_second and our engine's stats do
(timing="total"); SubprocessPeer(..., timing="decode") gives (n_tokens - 1) / decode seconds.

SubprocessPeer(..., ignore_eos=True) asks the worker for every run to go on past end-of-sequence
tokens to max_new_tokens (benchmarks at equal lengths; those tokens then count as generated).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "peer_worker.py"
PEERS_DIR = Path(os.environ.get("SPECOPS_PEERS_DIR", ROOT / ".peers"))
CACHE = Path(os.environ.get("SPECOPS_MODEL_CACHE_DIR", Path.home() / ".cache" / "specops"))
DEFAULT_GGUF = os.environ.get("SMOLLM2_GGUF", str(CACHE / "downloads" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
DEFAULT_OV_MODEL = os.environ.get("SMOLLM2_OV_MODEL", str(PEERS_DIR / "models" / "smollm2-ov-int4"))


class PeerError(RuntimeError):
    """The worker failed to load or answered a request with an error; str() is its message."""


class SubprocessPeer:
    """A peer_worker.py process: `python` is the peer venv's interpreter, `args` the worker's arguments
    (e.g. ["--peer", "llama_cpp", "--model", PATH, "--mode", "lookup", "--k", "4"])."""

    def __init__(self, python, args, *, timing: str = "total", name: str | None = None,
                 stderr=None, env: dict | None = None, ignore_eos: bool = False):
        if timing not in ("total", "decode"):
            raise ValueError("timing must be 'total' or 'decode'")
        self.python, self.args, self.timing = str(python), [str(a) for a in args], timing
        self.ignore_eos = ignore_eos
        self.name = name or " ".join(self.args)
        if not Path(self.python).exists():
            raise PeerError(f"{self.python} not found: run scripts/peers/setup_peers.sh")
        self.proc = subprocess.Popen([self.python, str(WORKER), *self.args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=stderr if stderr is not None else sys.stderr,
                                     text=True, bufsize=1, env={**os.environ, **(env or {})})
        hello = self._read()
        if not hello.get("ready"):
            self.close()
            raise PeerError(hello.get("error", "worker did not start"))
        self.info = hello
        self.config = {"python": self.python, "args": self.args, **hello.get("config", {}),
                       "versions": hello.get("versions", {}), "ignore_eos": ignore_eos}

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.poll()
            raise PeerError(f"peer worker exited (rc={rc}) without an answer")
        return json.loads(line)

    def _request(self, req: dict) -> dict:
        """Send one request (with this peer's ignore_eos) and return the worker's answer."""
        if self.proc is None:
            raise PeerError("peer closed")
        if self.ignore_eos:
            req = {**req, "ignore_eos": True}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        out = self._read()
        if "error" in out:
            raise PeerError(out["error"])
        return out

    def run(self, prompt, max_new_tokens: int, constraint: dict | None = None) -> dict:
        """prompt: token ids (list of ints) or text; constraint: {"json_schema", "prefix", "suffix"}
        (peer_worker.py: the peer's own structured output). Returns the worker's response dict."""
        req = {"max_new_tokens": int(max_new_tokens), **({"constraint": constraint} if constraint else {})}
        if isinstance(prompt, str):
            req["prompt"] = prompt
        else:
            req["ids"] = [int(i) for i in prompt]
        return self._request(req)

    __call__ = run

    def run_batch(self, texts: list[str], max_new_tokens: int) -> dict:
        """openvino: all prompts in one generate call (its continuous batching); returns
        {"n_tokens": total generated, "total_seconds", "texts"}."""
        return self._request({"batch": list(texts), "max_new_tokens": int(max_new_tokens)})

    def tokens_per_second(self, prompt, max_new_tokens: int) -> float:
        """One run's generated tokens per second: over the whole call (prefill included, as
        ort_genai.Runner.tokens_per_second and our engine count) or, with timing="decode",
        the tokens after the first over the decode time."""
        out = self.run(prompt, max_new_tokens)
        n = out["n_tokens"]
        if self.timing == "decode":
            return (n - 1) / out["seconds"] if n > 1 and out["seconds"] > 0 else 0.0
        return n / out["total_seconds"] if n and out["total_seconds"] > 0 else 0.0

    def close(self) -> None:
        proc, self.proc = getattr(self, "proc", None), None
        if proc is None:
            return
        try:
            proc.stdin.close()
            proc.wait(timeout=30)
        except Exception:
            proc.kill()
            proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def llama_cpp_peer(mode: str = "greedy", k: int = 4, ngram: int = 2, *, model=DEFAULT_GGUF, threads: int = 2,
                   peers_dir: Path = PEERS_DIR, **kw) -> SubprocessPeer:
    """llama-cpp-python on the GGUF; mode "lookup" = LlamaPromptLookupDecoding(max_ngram_size=ngram,
    num_pred_tokens=k)."""
    args = ["--peer", "llama_cpp", "--model", model, "--mode", mode, "--threads", threads, "--k", k, "--ngram", ngram]
    return SubprocessPeer(Path(peers_dir) / "llama" / "bin" / "python", args, name=f"llama_cpp_{mode}", **kw)


def openvino_peer(mode: str = "greedy", k: int = 4, ngram: int = 3, *, model=DEFAULT_OV_MODEL, threads: int = 2,
                  f32: bool = False, peers_dir: Path = PEERS_DIR, **kw) -> SubprocessPeer:
    """OpenVINO GenAI LLMPipeline on the int4 IR (or the GGUF, which it also reads); mode "lookup" =
    prompt_lookup=True with num_assistant_tokens=k, max_ngram_size=ngram. f32: the worker's --ov-f32
    (f32 compute and KV cache, no dynamic quantization: lookup output then equals greedy's)."""
    args = ["--peer", "openvino", "--model", model, "--mode", mode, "--threads", threads, "--k", k, "--ngram", ngram]
    if f32:
        args.append("--ov-f32")
    return SubprocessPeer(Path(peers_dir) / "openvino" / "bin" / "python", args,
                          name=f"openvino_{mode}{'_f32' if f32 else ''}", **kw)


# ------------------------------------------------------------------------------------ CLI
CHATML_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(user: str, system: str = CHATML_SYSTEM) -> str:
    """SmolLM2-Instruct's chat template as text (what its template renders for one user turn)."""
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n")


def load_prompts(name: str, n: int = 0) -> list[dict]:
    """prompts/<name>.jsonl (or a path); n > 0 takes n items spread evenly over the file."""
    path = Path(name) if name.endswith(".jsonl") else ROOT / "prompts" / f"{name}.jsonl"
    items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if 0 < n < len(items):
        items = [items[(i * len(items)) // n] for i in range(n)]
    return items


def _median(xs):
    xs = sorted(xs)
    if not xs:
        return 0.0
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def bench(argv=None) -> int:
    """Interleaved peer benchmark: every repeat runs every prompt on every peer back to back."""
    import argparse
    import time

    ap = argparse.ArgumentParser(prog="subprocess_peer.py bench", description=bench.__doc__)
    ap.add_argument("--peer", action="append", required=True,
                    help="NAME=peer:mode[:k[:ngram[:f32]]], e.g. llama_greedy=llama_cpp:greedy, "
                         "ov_lookup=openvino:lookup:4:3, ov_exact=openvino:lookup:4:3:f32 (repeatable)")
    ap.add_argument("--prompts", action="append", default=None, help="prompt set(s) (default copy_real, chat_real)")
    ap.add_argument("--n", type=int, default=10, help="prompts per set, spread evenly (0: all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--ov-model", default=DEFAULT_OV_MODEL)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the full JSON report here")
    ap.add_argument("--ignore-eos", action="store_true", help="every run generates exactly --max-new-tokens")
    args = ap.parse_args(argv)

    peers: dict[str, SubprocessPeer] = {}
    try:
        for spec in args.peer:
            name, _, rest = spec.partition("=")
            parts = rest.split(":")
            kind, mode = parts[0], parts[1]
            kw = {"threads": args.threads, "ignore_eos": args.ignore_eos}
            if len(parts) > 2:
                kw["k"] = int(parts[2])
            if len(parts) > 3:
                kw["ngram"] = int(parts[3])
            if len(parts) > 4 and parts[4] == "f32":
                kw["f32"] = True
            if kind == "llama_cpp":
                peers[name] = llama_cpp_peer(mode, model=args.gguf, **kw)
            elif kind == "openvino":
                peers[name] = openvino_peer(mode, model=args.ov_model, **kw)
            else:
                ap.error(f"unknown peer {kind}")
        report = {"config": {n: p.config for n, p in peers.items()}, "max_new_tokens": args.max_new_tokens,
                  "ignore_eos": args.ignore_eos, "repeats": args.repeats, "sets": {}}
        for set_name in args.prompts or ["copy_real", "chat_real"]:
            items = load_prompts(set_name, args.n)
            texts = [chatml(it["prompt"]) for it in items]
            runs = {n: [[] for _ in texts] for n in peers}
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                for i, text in enumerate(texts):
                    for n, p in peers.items():
                        runs[n][i].append(p.run(text, args.max_new_tokens))
            rows = {}
            for n, per_prompt in runs.items():
                flat = [r for rs in per_prompt for r in rs]
                rows[n] = {
                    "tok_s": round(_median([r["n_tokens"] / r["total_seconds"] for r in flat if r["n_tokens"]]), 1),
                    "decode_tok_s": round(_median([(r["n_tokens"] - 1) / r["seconds"] for r in flat
                                                   if r["n_tokens"] > 1 and r["seconds"] > 0]), 1),
                    "ttft_ms": round(1000 * _median([r["ttft_seconds"] for r in flat]), 1),
                    "mean_new_tokens": round(sum(r["n_tokens"] for r in flat) / max(len(flat), 1), 1),
                    "outputs": [rs[0]["tokens"] for rs in per_prompt],
                    "texts": [rs[0]["text"] for rs in per_prompt],
                    "deterministic": all(r["tokens"] == rs[0]["tokens"] for rs in per_prompt for r in rs),
                }
            names = list(peers)
            same = {f"{a}|{b}": sum(x == y for x, y in zip(rows[a]["outputs"], rows[b]["outputs"]))
                    for i, a in enumerate(names) for b in names[i + 1:]}
            report["sets"][set_name] = {"prompts": len(texts), "seconds": round(time.perf_counter() - t0, 1),
                                        "peers": rows, "identical_outputs": same}
            summary = {n: {k: v for k, v in r.items() if k not in ("outputs", "texts")} for n, r in rows.items()}
            print(json.dumps({"set": set_name, "prompts": len(texts), "summary": summary,
                              "identical_outputs (of prompts)": same}), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1))
    finally:
        for p in peers.values():
            p.close()
    return 0


if __name__ == "__main__":
    # python scripts/peers/subprocess_peer.py bench --peer NAME=llama_cpp:greedy --peer ... [--prompts copy_real]
    # python scripts/peers/subprocess_peer.py llama_cpp|openvino greedy|lookup "raw prompt text"
    if len(sys.argv) > 1 and sys.argv[1] == "bench":
        sys.exit(bench(sys.argv[2:]))
    peer_name, mode, text = sys.argv[1], sys.argv[2], sys.argv[3]
    p = (llama_cpp_peer if peer_name == "llama_cpp" else openvino_peer)(mode)
    print(json.dumps({"config": p.config, **p.run(text, 64)}))
    p.close()
