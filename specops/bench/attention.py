"""`specops bench attention`: specops.Attention against onnxruntime's GroupQueryAttention, one
layer, the same pass (not a test).

For each --past (positions already cached) and --rows (new rows of one sequence: 1 = a decoding
step, 64 or 512 = prompt chunks), both operators compute the same pass on the model's head shape
(default SmolLM2-135M's: 9 heads, 3 KV heads, 64 dims), each writing its cache in place (GQA with
its past and present bound to one buffer of the whole capacity, as onnxruntime-genai runs it).
Interleaved, --repeats runs each, medians of wall and CPU time (CPU time: the threads' work, less
sensitive to other load than wall time). Prints one JSON line (and --json writes it).

    specops bench attention [--past 0,1000,3000,6500] [--rows 1,64,512] [--heads 9] [--kv-heads 3] [--dim 64]
                            [--build auto|avx512|portable]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from .measure import emit_report, run_record


def _rotary(positions: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    angles = np.arange(positions)[:, None] / (10000 ** (np.arange(0, d, 2) / d))[None]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def one_pass(which: str, shape: tuple[int, int, int], capacity: int, past: int, rows: int, library: str | None,
             threads: int, rng):
    """One operator's pass of `rows` new rows of one sequence after `past` cached positions, bound
    once and rerunnable (each run writes the same cache positions again): a function timing one
    run, (wall s, CPU s)."""
    from ..runtime.decoder import bound_pass
    from ..runtime.ragged import ATTENTION_INPUTS, ROW_POS, ROW_SLOT, attention_graph

    heads, kv_heads, d = shape
    cos, sin = _rotary(capacity, d)
    cache = (rng.standard_normal((1, kv_heads, capacity, d)) * 0.5).astype(np.float32)
    every = {"qkv": rng.standard_normal((1, rows, (heads + 2 * kv_heads) * d)).astype(np.float32),
             "key_cache": cache, "value_cache": cache.copy(), "cos": cos, "sin": sin,
             ROW_SLOT: np.zeros(rows, np.int32), ROW_POS: np.arange(past, past + rows, dtype=np.int32),
             "seqlens_k": np.array([past + rows - 1], np.int32), "total_sequence_length": np.array(past + rows, np.int32)}
    feeds = {n: every[n] for n in ATTENTION_INPUTS[which] if n}
    run = bound_pass(attention_graph(which, heads, kv_heads), feeds,
                     {"key_cache": "key_out", "value_cache": "value_out"},
                     library if which == "specops" else None, threads)

    def timed() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        return time.perf_counter() - t0, time.process_time() - c0
    return timed


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--past", default="0,1000,3000,6500", help="cached positions before the pass (comma-separated)")
    ap.add_argument("--rows", default="1,64,512", help="new rows of the pass (comma-separated)")
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--build", default="auto", choices=("auto", "avx512", "portable"),
                    help="which build of specops' kernel library (SPECOPS_KERNEL_BUILD)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--json", type=Path, help="also write the report here")


def main(args: argparse.Namespace) -> int:
    from ..runtime import kernels

    lib = kernels.library(kernels.default_cache_dir(), args.build)
    library = str(lib)
    shape = (args.heads, args.kv_heads, args.dim)
    rng = np.random.default_rng(0)
    cases = []
    for past in map(int, args.past.split(",")):
        for rows in map(int, args.rows.split(",")):
            capacity = (past + rows + 15) // 16 * 16
            ops = {w: one_pass(w, shape, capacity, past, rows, library, args.threads, rng)
                   for w in ("specops", "onnxruntime")}
            for op in ops.values():
                op()  # warm-up
            times: dict[str, list[tuple[float, float]]] = {w: [] for w in ops}
            for _ in range(args.repeats):  # interleaved
                for w, op in ops.items():
                    times[w].append(op())
            med = {w: (statistics.median(t[0] for t in ts) * 1e3, statistics.median(t[1] for t in ts) * 1e3)
                   for w, ts in times.items()}
            cases.append({"past": past, "rows": rows,
                          **{f"{w}_ms": round(m[0], 3) for w, m in med.items()},
                          **{f"{w}_cpu_ms": round(m[1], 3) for w, m in med.items()},
                          "onnxruntime_over_specops_cpu": round(med["onnxruntime"][1] / med["specops"][1], 3)})
    emit_report({"bench": "attention", "run": run_record(args.command_line), "build": kernels.build_of(lib),
                 "heads": args.heads,
                 "kv_heads": args.kv_heads, "dim": args.dim, "threads": args.threads, "repeats": args.repeats,
                 "cases": cases}, args.json)
    return 0
