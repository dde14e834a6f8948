"""`specops bench`: what users measure, one subcommand each (specops/bench/cli.py): `speculators`
(prompt sets, optional peers), `serve` (N clients against a running or started server), `curves`
(verify-pass costs), `soak` (a long mixed load and its verdict), `join` (a long prompt joining a stream). `measure` holds the interleaved
runs, medians, near-tie proofs and cost bounds that these and scripts/ci_benchmark.py share; its
names are re-exported here."""
from .measure import (NEAR_TIE, PROMPTS, Interleaved, PeerRun, Results, best_bound, cost_bound, emit_report,
                      first_divergence, greedy_mismatches, load_prompt_items, load_prompt_set, mode_speedups,
                      near_tie_margin, near_tie_moves, near_tie_refutation, parse_speculator, peer_ratios,
                      prompt_text, run_interleaved, run_record, summarize)
from .structured import load_structured_set, valid_fraction

__all__ = ["NEAR_TIE", "PROMPTS", "Interleaved", "PeerRun", "Results", "best_bound", "cost_bound", "emit_report",
           "first_divergence", "greedy_mismatches", "load_prompt_items", "load_prompt_set", "mode_speedups",
           "near_tie_margin", "near_tie_moves", "near_tie_refutation", "parse_speculator", "peer_ratios",
           "prompt_text", "run_interleaved", "run_record", "summarize", "load_structured_set", "valid_fraction"]
