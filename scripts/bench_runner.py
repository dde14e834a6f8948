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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specops.bench import load_prompt_set, peer_ratios, run_interleaved  # noqa: E402
from specops.config import Settings  # noqa: E402
from specops.loader import load_engine, local_paths  # noqa: E402

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
    prompts = load_prompt_set("chat_real", engine.tokenizer)[:args.prompts]
    og_run = greedy_runner(local_paths(settings).target, threads=settings.intra_op_threads)
    # interleaved: each prompt and repeat runs ours, then theirs; ratios per run pair, so drift cancels
    run = run_interleaved(engine, prompts, ["none"], args.repeats, args.max_new_tokens, k=0,
                          peers={"onnxruntime_genai": og_run.tokens_per_second})
    ours = [r.stats.tokens_per_second for runs in run.results["none"] for r in runs]
    theirs = [rate for rates in run.peer_rates["onnxruntime_genai"] for rate in rates]
    print(json.dumps({
        "bench": "runner_vs_onnxruntime_genai", "cores": os.cpu_count(), "prompts": len(prompts),
        "repeats": args.repeats, "max_new_tokens": args.max_new_tokens,
        "specops_tok_s_median": round(float(np.median(ours)), 1),
        "onnxruntime_genai_tok_s_median": round(float(np.median(theirs)), 1),
        "ratio_median": peer_ratios(run, {"none": ["onnxruntime_genai"]})["none_vs_onnxruntime_genai"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
