#!/usr/bin/env python
"""Speculators vs target-only decoding on the committed prompt sets (copy-heavy and free),
in one run, interleaved, medians; with the cost-model bound. Prints one JSON line; --json
writes it to a file, --chart draws tok/s and TPJ per speculator (needs matplotlib). Not a test.

    python scripts/bench.py [--repeats 3] [--max-new-tokens 96] [--k 4] [--json out.json] [--chart out.png]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specops.bench import greedy_mismatches, load_prompt_set, peer_ratios, run_interleaved, summarize  # noqa: E402
from specops.config import Settings  # noqa: E402
from specops.loader import load_engine  # noqa: E402

SPECULATORS = ["none", "ngram", "draft", "hybrid", "auto"]
# our speculator <-> onnxruntime-genai mode it is compared with
PEER_OF = {"none": "greedy", "ngram": "ngram", "draft": "draft_same_vocab"}


def peer_runners(settings, k: int) -> tuple[dict, dict]:
    """onnxruntime-genai's greedy, n-gram and draft modes on the same folders (scripts/peers)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from peers import ort_genai as og

    target, draft = Path(settings.target_model), Path(settings.draft_model)
    runners = {"greedy": og.greedy_runner(target), "ngram": og.ngram_runner(target, k=k)}
    refused: dict[str, str] = {}
    try:
        runners["draft"] = og.draft_runner(target, draft, k=k)
    except og.PeerRefused as err:  # a draft with a different vocabulary: reported verbatim
        refused["draft"] = str(err)
    runners["draft_same_vocab"] = og.same_vocab_draft_runner(target, draft, k=k)
    return {name: run.tokens_per_second for name, run in runners.items()}, refused


def cost_figures(engine, k: int) -> dict:
    """The engine's current cost estimates (ms): verify passes of 1..k+1 tokens, alone and right
    after draft passes, and one draft pass."""
    cost = engine.cost

    def ms(table):
        return [round(t * 1000, 3) for t in (table or [])[:k + 1]]

    return {"verify_ms": ms(cost.verify_s), "verify_after_draft_ms": ms(cost.verify_after_draft_s),
            "draft_ms": round((cost.draft_s or 0) * 1000, 3)}


class Progress:
    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.time()

    def __call__(self) -> None:
        self.done += 1
        width = 30
        filled = width * self.done // self.total
        print(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
              f"{time.time() - self.start:5.0f}s", end="", file=sys.stderr, flush=True)
        if self.done == self.total:
            print(file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="copy,free")
    parser.add_argument("--speculators", default=",".join(SPECULATORS),
                        help="comma-separated; NAME@fixed proposes k every round instead of adapting k")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--k", type=int, default=4, help="k_draft upper bound")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N prompts of each set")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--chart", type=Path)
    parser.add_argument("--peers", action="store_true", help="also run onnxruntime-genai's modes (build extra)")
    args = parser.parse_args()

    settings = Settings()
    engine = load_engine(settings)
    startup = copy.deepcopy(engine.cost)  # pass costs timed alone, before the online estimates move
    peers, refused = peer_runners(settings, args.k) if args.peers else ({}, {})
    speculators = args.speculators.split(",")
    sets = {name: load_prompt_set(name, engine.tokenizer) for name in args.sets.split(",")}
    if args.limit:
        sets = {k: v[:args.limit] for k, v in sets.items()}
    progress = Progress(sum(len(p) for p in sets.values()) * (len(speculators) + len(peers)) * args.repeats)
    report = {"bench": "speculators", "cores": os.cpu_count(), "repeats": args.repeats,
              "max_new_tokens": args.max_new_tokens, "k": args.k,
              # start-up calibration; each set's bound uses the online estimates in its bound_costs
              **cost_figures(engine, args.k), "sets": {}}
    for name, prompts in sets.items():
        run = run_interleaved(engine, prompts, speculators, args.repeats, args.max_new_tokens, args.k, progress,
                              peers)
        results = run.results
        report["sets"][name] = {"prompts": len(prompts), "speculators": summarize(results, engine, args.k, startup),
                                # the engine's online estimates by now (what bound_online used)
                                "bound_costs": cost_figures(engine, args.k)}
        if "none" in results:
            report["sets"][name]["greedy_mismatches"] = greedy_mismatches(results)
        if peers:
            report["sets"][name]["peers"] = {p: {"tok_s": round(float(np.median(rates)), 1)}
                                             for p, rates in run.peer_rates.items()}
            report["sets"][name]["peer_ratios"] = peer_ratios(run, PEER_OF)
    if refused:
        report["peers_refused"] = refused
    line = json.dumps(report)
    print(line)
    if args.json:
        args.json.write_text(line + "\n")
    if args.chart:
        from chart import draw  # scripts/chart.py; matplotlib only when asked

        draw(report, args.chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
