#!/usr/bin/env python
"""Where a mixed ragged pass spends its time (issue 21's profile; not a test).

The default model on the tiled kernel and specops.Attention: --decoding sequences of --context
tokens each decode one row while a joining prompt reads --chunk tokens at --prompt-at tokens of
its own context, all in one pass; onnxruntime's profiler times every node over --passes such
passes. Prints one JSON line: ms per pass by operator type (and share), the pass's wall time,
and the same for a decoding-only pass.

    python scripts/pass_profile.py [--decoding 3] [--context 300] [--chunk 64] [--prompt-at 2000] [--passes 20]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from specops.bench import emit_report  # noqa: E402
from specops.config import Settings  # noqa: E402
from specops.model_source import sync_paths  # noqa: E402
from specops.runtime.batch_decoder import BatchDecoder  # noqa: E402
from specops.runtime.decoder import SessionConfig  # noqa: E402
from specops.runtime.model_folder import read_model_folder  # noqa: E402


def by_op(trace: Path, passes: int) -> dict[str, float]:
    """Ms per pass by operator type over the trace's last `passes` runs (onnxruntime's profile:
    a "model_run" event per run, node events inside it)."""
    events = json.loads(trace.read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[-passes:]
    total: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and any(a <= e["ts"] <= b for a, b in runs):
            total[e["args"]["op_name"]] += e["dur"] / 1e3
    return {op: round(ms / len(runs), 3) for op, ms in sorted(total.items(), key=lambda kv: -kv[1])}


def timed(batch: BatchDecoder, rows: list[tuple[int, list[int], int]], passes: int) -> float:
    """Median ms of `passes` passes over rows (slot, ids, logits kept), each rewound after."""
    ms = []
    for _ in range(passes):
        lengths = batch.lengths.copy()
        t0 = time.perf_counter()
        batch.run([s for s, _, _ in rows], [ids for _, ids, _ in rows], [k for _, _, k in rows])
        ms.append((time.perf_counter() - t0) * 1e3)
        batch.lengths[:] = lengths
    return float(np.median(ms))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decoding", type=int, default=3)
    ap.add_argument("--context", type=int, default=300)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--prompt-at", type=int, default=2000)
    ap.add_argument("--passes", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    settings = Settings()
    spec = read_model_folder(sync_paths(settings).target)
    report = {"bench": "pass_profile", "decoding": args.decoding, "context": args.context, "chunk": args.chunk,
              "prompt_at": args.prompt_at, "passes": args.passes}
    for name in ("decoding_only", "mixed"):  # a session each, so that each trace holds its own passes
        with tempfile.TemporaryDirectory() as tmp:
            cfg = SessionConfig(settings.intra_op_threads, kernel="tiled", precision=settings.kernel_precision,
                                profile=str(Path(tmp) / name))
            batch = BatchDecoder(spec, cfg, max_batch=args.decoding + 1, capacity=args.prompt_at + args.chunk + 16)
            if not batch.ragged:
                sys.exit(f"no ragged passes here: {batch.attention}")
            rng = np.random.default_rng(0)
            for slot in range(args.decoding):
                batch.prefill(slot, rng.integers(3, 40000, args.context).tolist())
            batch.prefill(args.decoding, rng.integers(3, 40000, args.prompt_at).tolist())
            rows = [(s, [int(rng.integers(3, 40000))], 1) for s in range(args.decoding)]
            if name == "mixed":
                rows.append((args.decoding, rng.integers(3, 40000, args.chunk).tolist(), 0))
            wall = timed(batch, rows, args.passes)
            trace = Path(batch.session.end_profiling())
            report[name] = {"wall_ms": round(wall, 2), "precision": batch.precision, "ms_by_op": by_op(trace, args.passes)}
    emit_report(report, args.json)


if __name__ == "__main__":
    main()
