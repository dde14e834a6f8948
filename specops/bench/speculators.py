"""`specops bench speculators`: speculators vs target-only decoding on the committed prompt sets,
in one run, interleaved, medians; with the cost-model bound, and optionally the peers on the same
weights and prompts. Prints one JSON line; --json writes it to a file, --chart draws tok/s and TPJ
per speculator (needs matplotlib: the `bench` extra). Not a test.

    specops bench speculators [--sets copy_real,chat_real] [--repeats 3] [--max-new-tokens 96] [--k 4]
        [--peers ort_genai,llama_cpp,openvino] [--ignore-eos] [--baseline-folder PATH [--baseline-precision int8]]
        [--json out.json] [--chart out.png]

--ignore-eos: every run, ours and the peers', generates exactly --max-new-tokens (as vLLM's
benchmarks do), so tokens/s compare equal lengths; a peer whose answers end early would otherwise
look faster or slower by accident. Our engine and OpenVINO GenAI (GenerationConfig.ignore_eos)
commit an end-of-sequence token like any other, llama.cpp's token loop goes on past it, and
onnxruntime-genai, which has no such option, gets min_length = prompt + max_new_tokens (it masks
the end-of-sequence tokens instead: the same lengths, other tokens after that point).

Peer `specops_stock`: this engine again with onnxruntime's own matmul kernels (SPECOPS_KERNEL=stock)
in modes none, ngram and auto, so the tiled kernel's gain and each speculator's speedup on both
kernels come from one interleaved run.

Peers `specops_baseline_{none,ngram,auto}` (--baseline-folder): this engine again on another
target folder (e.g. an older int8 export) with kernel_precision --baseline-precision (int8:
int8 activations), the same draft, interleaved the same way; `baseline_speedups` are each
speculator's speedup there and `peer_ratios` compare ours with it mode by mode.

Structured sets (--sets structured: prompts/structured.jsonl, 20 JSON-schema extraction prompts and
6 tool-call prompts): each prompt runs under its constraint (the grammar's forced tokens proposed
for free), as the server would run it; `valid` is the share of outputs that parse and validate
against their schema (tool calls: one call to an offered function, arguments valid). The grammar
ends each output, so --ignore-eos does not apply there (greedy outputs are equal whatever the
speculator, so the lengths are too). `time_per_output_s`: the median wall time of one output.
With --peers llama_cpp,openvino the peers run the same prompts (our token ids, our chat template)
under their own structured output, greedy, interleaved with our speculators per prompt:
`llama_cpp_json_schema` (llama.cpp's JSON-schema grammar) and `openvino_structured` (OpenVINO
GenAI's StructuredOutputConfig, xgrammar). A JSON-schema prompt gives them its schema; a tool prompt
the schema of the one call our tool grammar allows, between the call's literal tags (peer_constraint
in specops/bench/structured.py). Each peer row has tok/s (generated tokens over the call's wall time),
seconds per output, valid share (errors count as invalid) and errors; `peer_ratios` are our tok/s
over theirs and `peer_time_ratios` their seconds per output over ours (medians of per-prompt ratios).

    specops bench speculators --sets structured --speculators none,ngram,auto --max-new-tokens 128 \
        [--peers llama_cpp,openvino]

Peers: onnxruntime-genai's greedy and n-gram modes on our ONNX folder (and its draft mode where it
accepts the pair; the `prepare` extra has it); llama.cpp (llama-cpp-python) on the GGUF itself and
OpenVINO GenAI on the model converted by optimum-intel, greedy and prompt lookup, each in its own
virtualenv made by scripts/peers/setup_peers.sh, driven over a pipe (scripts/peers/subprocess_peer.py).
The peers' code lives in scripts/peers/ (it imports onnxruntime_genai, which the package never does):
peers need a source checkout.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..config import Settings
from ..loader import load_engine, local_paths
from .measure import (PeerOutput, emit_report, greedy_mismatches, load_prompt_set, mode_speedups, peer_ratios,
                      run_interleaved, run_record, summarize)
from .structured import (constrained_peer_rows, load_structured_set, peer_time_ratios, seconds_per_output,
                         valid_fraction)

ROOT = Path(__file__).resolve().parents[2]


def peers_on_path() -> None:
    """The peers (scripts/peers: onnxruntime-genai, and llama.cpp and OpenVINO GenAI over a pipe)
    are importable as `peers` from a source checkout."""
    scripts = ROOT / "scripts"
    if not (scripts / "peers").is_dir():
        raise OSError(f"peers need a source checkout: {scripts / 'peers'} not found")
    if str(scripts) not in sys.path:
        sys.path.insert(0, str(scripts))


SPECULATORS = ["none", "ngram", "draft", "hybrid", "auto"]
STRUCTURED_SETS = ("structured",)  # prompt sets whose items carry a schema or tools
# our speculator <-> the peer modes it is compared with
ENGINE_PEER_MODES = ("none", "ngram", "auto")  # the speculators this engine runs as a peer of itself
PEER_OF = {"none": ["ort_genai_greedy", "llama_cpp_greedy", "openvino_greedy", "specops_stock_none",
                    "specops_baseline_none"],
           "ngram": ["ort_genai_ngram", "llama_cpp_lookup", "openvino_lookup", "specops_stock_ngram",
                     "specops_baseline_ngram"],
           "auto": ["ort_genai_ngram", "llama_cpp_lookup", "openvino_lookup", "specops_stock_auto",
                    "specops_baseline_auto"],
           "draft": ["ort_genai_draft", "ort_genai_draft_same_vocab"]}
# structured sets: each peer's own constrained decoding (greedy), against each of our speculators
CONSTRAINED_PEERS = {"llama_cpp": "llama_cpp_json_schema", "openvino": "openvino_structured"}
CONSTRAINED_PEER_OF = {s: list(CONSTRAINED_PEERS.values()) for s in ENGINE_PEER_MODES}


def ort_genai_peers(paths, k: int, ignore_eos: bool) -> tuple[dict, dict]:
    """onnxruntime-genai's greedy, n-gram and draft modes on the same folders (scripts/peers)."""
    from peers import ort_genai as og

    runners = {"ort_genai_greedy": og.greedy_runner(paths.target, ignore_eos=ignore_eos),
               "ort_genai_ngram": og.ngram_runner(paths.target, k=k, ignore_eos=ignore_eos)}
    refused: dict[str, str] = {}
    if paths.draft is not None:
        try:
            runners["ort_genai_draft"] = og.draft_runner(paths.target, paths.draft, k=k, ignore_eos=ignore_eos)
        except og.PeerRefused as err:  # a draft with a different vocabulary: reported verbatim
            refused["ort_genai_draft"] = str(err)
    return {name: run.tokens_per_second for name, run in runners.items()}, refused


def subprocess_peers(which: list[str], k: int, ignore_eos: bool) -> dict:
    """llama.cpp and OpenVINO GenAI, greedy and prompt lookup, each in its own virtualenv."""
    from peers.subprocess_peer import llama_cpp_peer, openvino_peer

    make = {"llama_cpp": llama_cpp_peer, "openvino": openvino_peer}
    return {f"{name}_{mode}": make[name](mode, k=k, ignore_eos=ignore_eos).tokens_per_second
            for name in which for mode in ("greedy", "lookup")}


def constrained_runner(peer):
    """A SubprocessPeer as a ConstrainedPeerRun; a refusal or a crash is that run's error."""
    from peers.subprocess_peer import PeerError

    def run(ids: list[int], max_new_tokens: int, constraint: dict) -> PeerOutput:
        try:
            out = peer.run(ids, max_new_tokens, constraint)
        except (PeerError, OSError) as err:
            return PeerOutput(0, 0.0, "", error=str(err))
        detail = {k: float(v) for k, v in out.items() if k.endswith("_ms")}
        return PeerOutput(out["n_tokens"], out["total_seconds"], out["text"], detail=detail or None)
    return run


def constrained_peers(which: list[str]) -> tuple[dict, dict, dict]:
    """llama.cpp and OpenVINO GenAI under their own structured output, greedy, each in its own
    virtualenv: runners, each one's config (versions, settings), and those that did not start."""
    peers_on_path()
    from peers.subprocess_peer import PeerError, llama_cpp_peer, openvino_peer

    unknown = [w for w in which if w not in CONSTRAINED_PEERS]
    if unknown:
        raise ValueError(f"structured sets run the peers {sorted(CONSTRAINED_PEERS)}, not {unknown}")
    make = {"llama_cpp": llama_cpp_peer, "openvino": openvino_peer}
    runners, configs, refused = {}, {}, {}
    for name in which:
        try:
            peer = make[name]("greedy")
        except PeerError as err:  # a peer venv missing or a load failure: the others still run
            refused[CONSTRAINED_PEERS[name]] = str(err)
            continue
        runners[CONSTRAINED_PEERS[name]], configs[CONSTRAINED_PEERS[name]] = constrained_runner(peer), peer.config
    return runners, configs, refused


def engine_peers(engine, prefix: str, k: int, ignore_eos: bool) -> dict:
    """Another engine (other settings) as peers `{prefix}_{mode}`, one per ENGINE_PEER_MODES."""
    from specops.engine.sampling_params import SamplingParams

    def runner(speculator: str):
        def run(ids: list[int], max_new_tokens: int) -> float:
            params = SamplingParams(max_new_tokens=max_new_tokens, speculator=speculator, k_draft=k,
                                    ignore_eos=ignore_eos)
            return engine.generate(ids, params).stats.tokens_per_second
        return run

    return {f"{prefix}_{s}": runner(s) for s in ENGINE_PEER_MODES}


def stock_kernel_peers(settings: Settings, paths, k: int, ignore_eos: bool) -> dict:
    """This engine on onnxruntime's own kernels, target-only, n-gram and auto."""
    engine = load_engine(settings.model_copy(update={"kernel": "stock"}), paths)
    return engine_peers(engine, "specops_stock", k, ignore_eos)


def baseline_settings(settings: Settings, folder: Path, precision: str) -> Settings:
    """Our settings with another target folder and kernel precision (the tokenizer is that
    folder's own; the draft stays ours)."""
    return settings.model_copy(update={"target_model": str(folder), "target_tokenizer": "",
                                       "kernel_precision": precision})


def baseline_peers(settings: Settings, folder: Path, precision: str, k: int, ignore_eos: bool) -> tuple[dict, dict]:
    """This engine on `folder` at `precision` as peers specops_baseline_*, and what was loaded."""
    baseline = baseline_settings(settings, folder, precision)
    engine = load_engine(baseline, local_paths(baseline))
    loaded = {"folder": str(folder), "kernel_precision": precision, "kernel": engine.target.kernel,
              "kernel_note": engine.target.kernel_note}
    return engine_peers(engine, "specops_baseline", k, ignore_eos), loaded


def peer_runners(settings: Settings, paths, which: list[str], k: int, ignore_eos: bool) -> tuple[dict, dict]:
    peers_on_path()
    peers, refused = ort_genai_peers(paths, k, ignore_eos) if "ort_genai" in which else ({}, {})
    peers.update(subprocess_peers([w for w in which if w not in ("ort_genai", "specops_stock")], k, ignore_eos))
    if "specops_stock" in which:
        peers.update(stock_kernel_peers(settings, paths, k, ignore_eos))
    return peers, refused


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sets", default="copy_real,chat_real")
    parser.add_argument("--speculators", default=",".join(SPECULATORS),
                        help="comma-separated; NAME@fixed proposes k every round instead of adapting k")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--k", type=int, default=4, help="k_draft upper bound")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N prompts of each set")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--chart", type=Path)
    parser.add_argument("--peers", default="", help="comma-separated: ort_genai, llama_cpp, openvino, specops_stock "
                        "(structured sets: llama_cpp, openvino, under their own structured output)")
    parser.add_argument("--ignore-eos", action="store_true",
                        help="every run (ours and the peers') generates exactly --max-new-tokens")
    parser.add_argument("--baseline-folder", type=Path,
                        help="peers specops_baseline_{none,ngram,auto}: this engine on that target folder")
    parser.add_argument("--baseline-precision", default="int8", choices=["auto", "fp32", "bf16", "int8"],
                        help="the baseline's kernel_precision (default int8: int8 activations)")


def main(args: argparse.Namespace) -> int:

    settings = Settings()
    paths = local_paths(settings)
    engine = load_engine(settings, paths)
    startup = copy.deepcopy(engine.cost)  # pass costs timed alone, before the online estimates move
    structured_only = all(name in STRUCTURED_SETS for name in args.sets.split(","))
    peer_config = {}
    if args.peers and structured_only:
        peers, peer_config, refused = constrained_peers(args.peers.split(","))
    elif args.peers:
        peers, refused = peer_runners(settings, paths, args.peers.split(","), args.k, args.ignore_eos)
    else:
        peers, refused = {}, {}
    baseline = None
    if args.baseline_folder:
        baseline_runners, baseline = baseline_peers(settings, args.baseline_folder, args.baseline_precision, args.k,
                                                    args.ignore_eos)
        peers.update(baseline_runners)
    speculators = args.speculators.split(",")
    structured = {name: load_structured_set(name, engine) for name in args.sets.split(",") if name in STRUCTURED_SETS}
    sets = {name: structured[name].prompts if name in structured else load_prompt_set(name, engine.tokenizer)
            for name in args.sets.split(",")}
    if args.limit:
        sets = {k: v[:args.limit] for k, v in sets.items()}
    if structured and args.peers and not structured_only:
        raise ValueError("peers on structured sets run under constraints: run structured and plain sets apart")
    progress = Progress(sum(len(p) for p in sets.values()) * (len(speculators) + len(peers)) * args.repeats)
    report = {"bench": "speculators", "run": run_record(args.command_line),
              "cores": os.cpu_count(), "repeats": args.repeats,
              "kernel": engine.target.kernel, "kernel_note": engine.target.kernel_note,
              "max_new_tokens": args.max_new_tokens, "k": args.k, "ignore_eos": args.ignore_eos,
              **({"baseline": baseline} if baseline else {}),
              # start-up calibration; each set's bound uses the online estimates in its bound_costs
              **cost_figures(engine, args.k), "sets": {}}
    for name, prompts in sets.items():
        grammars = structured[name].grammars if name in structured else None
        constraints = structured[name].peer_constraints if name in structured and peers else None
        run = run_interleaved(engine, prompts, speculators, args.repeats, args.max_new_tokens, args.k, progress,
                              peers, ignore_eos=args.ignore_eos, grammars=grammars, peer_constraints=constraints)
        results = run.results
        report["sets"][name] = {"prompts": len(prompts), "speculators": summarize(results, engine, args.k, startup),
                                # the engine's online estimates by now (what bound_online used)
                                "bound_costs": cost_figures(engine, args.k)}
        if name in structured:
            report["sets"][name]["valid"] = valid_fraction(results, structured[name].checks)
            report["sets"][name]["forced_tokens"] = {
                s: sum(r.stats.forced_accepted for runs in per_prompt for r in runs) for s, per_prompt in results.items()}
            report["sets"][name]["time_per_output_s"] = seconds_per_output(results)
            if constraints:
                report["sets"][name]["peers"] = constrained_peer_rows(run, structured[name].peer_checks)
                report["sets"][name]["peer_ratios"] = peer_ratios(run, CONSTRAINED_PEER_OF)
                report["sets"][name]["peer_time_ratios"] = peer_time_ratios(run, CONSTRAINED_PEER_OF)
        if "none" in results:
            report["sets"][name]["greedy_mismatches"] = greedy_mismatches(results)
        if peers and not constraints:
            report["sets"][name]["peers"] = {p: {"tok_s": round(float(np.median(rates)), 1)}
                                             for p, rates in run.peer_rates.items()}
            report["sets"][name]["peer_ratios"] = peer_ratios(run, PEER_OF)
            for prefix, key in (("specops_stock", "stock_kernel_speedups"), ("specops_baseline", "baseline_speedups")):
                if f"{prefix}_none" in run.peer_rates:  # each speculator there over target-only there
                    report["sets"][name][key] = mode_speedups(run, prefix, ENGINE_PEER_MODES[1:])
    if refused:
        report["peers_refused"] = refused
    if peer_config:
        report["peer_config"] = peer_config
    emit_report(report, args.json)
    if args.chart:
        from .chart import draw  # matplotlib only when asked

        draw(report, args.chart)
    return 0


