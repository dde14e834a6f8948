#!/usr/bin/env python
"""Target-only greedy tokens/second: our runner vs onnxruntime-genai's generator, same target
folder, same prompts, interleaved repeats, medians. Needs onnxruntime-genai (the `build` extra).
Prints one JSON line. Not a test.

    python scripts/bench_runner.py [--repeats 5] [--max-new-tokens 128]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specops.bench import load_prompt_set  # noqa: E402
from specops.config import Settings  # noqa: E402
from specops.engine.sampling_params import SamplingParams  # noqa: E402
from specops.loader import load_engine  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from peers.ort_genai import greedy_runner  # noqa: E402  (same thread and spinning settings as ours)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    settings = Settings(draft_model="none")
    engine = load_engine(settings, calibrate=False)
    prompts = load_prompt_set("free", engine.tokenizer)[:args.prompts]
    og_run = greedy_runner(Path(settings.target_model), threads=settings.intra_op_threads)

    def theirs(ids, max_new):
        return len(og_run(ids, max_new)["tokens"])

    def ours(ids, max_new):
        return engine.generate(ids, SamplingParams(max_new_tokens=max_new, speculator="none")).stats.generated_tokens

    rates: dict[str, list[float]] = {"specops": [], "onnxruntime_genai": []}
    for _ in range(args.repeats):
        for ids in prompts:
            for name, fn in (("specops", ours), ("onnxruntime_genai", theirs)):
                t = time.perf_counter()
                n = fn(ids, args.max_new_tokens)
                rates[name].append(n / (time.perf_counter() - t))
    # per-prompt ratios from the same interleaved repeats, so machine drift cancels
    ratios = np.array(rates["specops"]) / np.array(rates["onnxruntime_genai"])
    print(json.dumps({
        "bench": "runner_vs_onnxruntime_genai", "cores": os.cpu_count(), "prompts": len(prompts),
        "repeats": args.repeats, "max_new_tokens": args.max_new_tokens,
        "specops_tok_s_median": round(float(np.median(rates["specops"])), 1),
        "onnxruntime_genai_tok_s_median": round(float(np.median(rates["onnxruntime_genai"])), 1),
        "ratio_median": round(float(np.median(ratios)), 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
