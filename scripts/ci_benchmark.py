#!/usr/bin/env python
"""Quality gate: blocks a change when speculation stops paying or stops being exact.

Runs the engine in-process on the default model (or SPECOPS_* settings) over the committed prompt sets
(greedy, so runs are deterministic), for every speculator, interleaved with target-only
decoding. Checks, per prompt set and speculator:
  - TPJ (tokens committed per target pass) > its floor (default 1.0, the seed's gate);
  - wall-clock speedup against `none` in the same run >= its floor;
  - greedy output equals `none` token for token (a difference must be a near-tie).
Floors live in benchmarks/ci_floors.json. Exit 1 with one line per failed check.

    python scripts/ci_benchmark.py [--json out.json] [--floors FILE] [--tpj-floor X] [--break-speculator NAME]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specops.bench import (first_divergence, load_prompt_set, near_tie_margin, near_tie_refutation,  # noqa: E402
                           run_interleaved, summarize)
from specops.config import Settings  # noqa: E402
from specops.loader import load_engine  # noqa: E402
from specops.speculators.base import Proposal  # noqa: E402


class RandomProposer:
    """A deliberately broken speculator (for proving the gate can fail): random ids."""

    def __init__(self, inner, vocab: int):
        self.inner, self.vocab, self.rng = inner, vocab, np.random.default_rng(0)
        self.name = inner.name

    def reset(self):
        self.inner.reset()

    def propose(self, context, k, sampler=None, stopper=None):
        return Proposal(self.rng.integers(0, self.vocab, size=k), None, self.name)


def exactness_failures(engine, prompts, results) -> list[str]:
    failures = []
    margin = near_tie_margin(engine.target.spec.folder, engine.target.precision)
    for s, per_prompt in results.items():
        for i, runs in enumerate(per_prompt):
            base, got = results["none"][i][0].token_ids, runs[0].token_ids
            j = first_divergence(got, base)
            if j is None:
                continue
            at = (lambda ids: ids[j] if j < len(ids) else None)  # None: that run ended at j
            why = near_tie_refutation(engine.target, prompts[i], base[:j], at(got), at(base), margin)
            if why:
                failures.append(f"{s}: greedy output differs from target-only on prompt {i} at token {j}: {why}")
    return failures


def check(summary: dict, floors: dict, set_name: str, tpj_override: float | None) -> list[str]:
    failures = []
    for s, row in summary.items():
        if s == "none":
            continue
        f = floors["floors"].get(set_name, {}).get(s, {})
        tpj_floor = tpj_override if tpj_override is not None else f.get("tpj", floors["tpj"])
        if row["tpj"] <= tpj_floor:
            failures.append(f"{set_name}/{s}: TPJ {row['tpj']:.3f} <= floor {tpj_floor}")
        if "speedup" in f and row["speedup"] is None:
            failures.append(f"{set_name}/{s}: no speedup measured (target-only decoding generated nothing)")
        elif "speedup" in f and row["speedup"] < f["speedup"]:
            failures.append(f"{set_name}/{s}: speedup {row['speedup']:.3f}x < floor {f['speedup']}x")
    return failures


def table(report: dict) -> str:
    lines = [f"{'set':6} {'speculator':10} {'TPJ':>6} {'accept':>7} {'tok/s':>8} {'speedup':>8}"]
    for set_name, rows in report["sets"].items():
        for s, r in rows.items():
            lines.append(f"{set_name:6} {s:10} {r['tpj']:6.2f} {r['acceptance']:7.2f} {r['tok_s']:8.1f} "
                         f"{r.get('speedup', 1.0) or 0.0:7.2f}x")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--floors", type=Path, default=ROOT / "benchmarks" / "ci_floors.json")
    parser.add_argument("--tpj-floor", type=float, help="override every TPJ floor")
    parser.add_argument("--break-speculator", choices=["ngram", "draft"], help="swap in random proposals")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    floors = json.loads(args.floors.read_text())
    engine = load_engine(Settings())
    if args.break_speculator == "ngram":
        engine.ngram = RandomProposer(engine.ngram, engine.target.spec.vocab_size)
    elif args.break_speculator == "draft":
        engine.draft = RandomProposer(engine.draft, engine.target.spec.vocab_size)
    cfg = floors["run"]
    report, failures = {"sets": {}}, []
    for set_name in cfg["sets"]:
        prompts = load_prompt_set(set_name, engine.tokenizer)[:cfg["prompts"]]
        results = run_interleaved(engine, prompts, cfg["speculators"], cfg["repeats"], cfg["max_new_tokens"],
                                  cfg["k"]).results
        summary = summarize(results, engine, cfg["k"])
        report["sets"][set_name] = summary
        failures += check(summary, floors, set_name, args.tpj_floor) + exactness_failures(engine, prompts, results)
    print(table(report))
    report["failures"] = failures
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    for line in failures:
        print(f"FAIL {line}")
    print("gate: " + ("FAILED" if failures else "passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
