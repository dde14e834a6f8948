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


def _session(op: str, domain: str, names: list[str], feeds: dict, attrs: dict, library: str | None, threads: int):
    """A one-node session: inputs `names` in the operator's order ("" = an input left out)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    types = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32}
    node = helper.make_node(op, names, ["out", "k_out", "v_out"], domain=domain, **attrs)
    graph = helper.make_graph(
        [node], op, [helper.make_tensor_value_info(n, types[feeds[n].dtype], [f"{n}{i}" for i in range(feeds[n].ndim)])
                     for n in names if n],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("out", "k_out", "v_out")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if library:
        so.register_custom_ops_library(library)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


class Pass:
    """One operator's pass of `rows` new rows after `past` cached positions, rerunnable (each run
    writes the same cache positions again)."""

    def __init__(self, which: str, shape: tuple[int, int, int], capacity: int, past: int, rows: int,
                 library: str | None, threads: int, rng):
        import onnxruntime as ort

        heads, kv_heads, d = shape
        cos, sin = _rotary(capacity, d)
        cache = (rng.standard_normal((1, kv_heads, capacity, d)) * 0.5).astype(np.float32)
        feeds = {"qkv": rng.standard_normal((1, rows, (heads + 2 * kv_heads) * d)).astype(np.float32),
                 "kc": cache, "vc": cache.copy(), "cos": cos, "sin": sin,
                 "slot": np.zeros(rows, np.int32), "pos": np.arange(past, past + rows, dtype=np.int32),
                 "seqlens": np.array([past + rows - 1], np.int32), "total": np.array(past + rows, np.int32)}
        if which == "specops":
            names = ["qkv", "kc", "vc", "slot", "pos", "cos", "sin"]
            attrs = dict(num_heads=heads, kv_num_heads=kv_heads, scale=0.0)
            self.session = _session("Attention", "specops", names, feeds, attrs, library, threads)
        else:
            names = ["qkv", "", "", "kc", "vc", "seqlens", "total", "cos", "sin"]
            attrs = dict(num_heads=heads, kv_num_heads=kv_heads, do_rotary=1, rotary_interleaved=0)
            self.session = _session("GroupQueryAttention", "com.microsoft", names, feeds, attrs, None, threads)
        self.io = self.session.io_binding()
        for name in filter(None, names):
            if name in ("kc", "vc"):  # the cache: input and output one buffer, written in place
                value = ort.OrtValue.ortvalue_from_numpy(feeds[name])
                self.io.bind_ortvalue_input(name, value)
                self.io.bind_ortvalue_output(name[0] + "_out", value)
            else:
                self.io.bind_cpu_input(name, feeds[name])
        self.io.bind_output("out")

    def __call__(self) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        self.session.run_with_iobinding(self.io)
        return time.perf_counter() - t0, time.process_time() - c0


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
            ops = {w: Pass(w, shape, capacity, past, rows, library, args.threads, rng) for w in ("specops", "onnxruntime")}
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
