"""Speculators against target-only decoding in one run (`specops bench speculators` and
scripts/ci_benchmark.py). Repeats are interleaved (each prompt runs every speculator in turn)
so that machine drift cancels in the per-prompt speedup ratios; figures are medians."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..engine.adaptive import CostModel, expected_tokens
from ..engine.llm_engine import Engine, GenerationResult
from ..engine.sampling_params import SamplingParams
from ..runtime.tokenizer import ChatMessage

PROMPTS = Path(__file__).resolve().parents[2] / "prompts"

# Two logits closer than this are a near-tie: the int4 target's single-token steps and its
# multi-token verify passes differ by up to 0.037 per logit
# (measured on the embedded target), so a gap up to twice that may flip between them.
NEAR_TIE = 0.08
Results = dict[str, list[list[GenerationResult]]]  # speculator -> [prompt][repeat]


def near_tie_margin(folder: Path, precision: str | None = None) -> float:
    """A prepared model's own margin at the kernel precision its engine runs (None: onnxruntime's
    own kernels): its recipe's `near_tie`, from the measured one-token/multi-token difference;
    else NEAR_TIE."""
    record = Path(folder) / "prepare.json"
    if not record.is_file():
        return NEAR_TIE
    return float(dict(json.loads(record.read_text())["recipe"]["near_tie"])[precision or "stock"])


def near_tie_moves(engine: Engine, prompts: list[list[int]], new_tokens: int = 48, width: int = 5) -> np.ndarray:
    """How far one-token passes move top-two gaps against `width`-token passes: for each prompt's
    greedy answer, every position's gap between the top token (of the wide pass) and each of its
    next four, one-token minus wide, absolute; flat [positions * 4]. The recipe's `near_tie` is the
    largest of these, rounded up. Runs one-token passes one row wide (the engine's min_rows aside)."""
    target, moves = engine.target, []
    saved, target.min_rows = target.min_rows, 1
    try:
        for ids in prompts:
            out = engine.generate(ids, SamplingParams(max_new_tokens=new_tokens, speculator="none")).token_ids
            n = len(out) // width * width
            if n == 0:
                continue
            target.reset()
            target.prefill(ids)
            one = np.stack([np.array(target.append([t])[-1]) for t in out[:n]])
            target.rewind(len(ids))
            wide = np.concatenate([np.array(target.append(out[i:i + width])) for i in range(0, n, width)])
            top = np.argsort(-wide, axis=1)[:, :5]
            rows = np.arange(n)[:, None]
            gaps = (lambda logits: logits[rows, top[:, :1]] - logits[rows, top[:, 1:]])
            moves.append(np.abs(gaps(one) - gaps(wide)).ravel())
    finally:
        target.min_rows = saved
        target.reset()
    return np.concatenate(moves) if moves else np.zeros(0)


def run_record(command: list[str]) -> dict:
    """Where a figure comes from: the command that measured it, the date (UTC) and the machine
    (CPU, its flags, onnxruntime, load average). `specops bench` puts it in every report under "run";
    docs/bench's tables print it under the table."""
    import datetime
    import shlex

    from ..profile import machine  # (profile imports this package: imported when called)

    return {"command": shlex.join(command), "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(), "machine": machine()}


def emit_report(report: dict, path: Path | None) -> None:
    """A benchmark script's result: one JSON line on stdout, and in `path` when given."""
    line = json.dumps(report)
    print(line)
    if path:
        path.write_text(line + "\n")


def load_prompt_items(name: str) -> list[dict]:
    """prompts/<name>.jsonl: {"kind": "free" | "chat" | ..., "prompt": text} per line."""
    return [json.loads(line) for line in (PROMPTS / f"{name}.jsonl").read_text().splitlines() if line]


def prompt_text(item: dict, tokenizer) -> str:
    """Chat prompts (kind "chat", or any kind marked "chat": true, e.g. a copy-heavy request)
    go through the target's chat template; the others are raw text."""
    if item["kind"] == "chat" or item.get("chat"):
        return tokenizer.apply_chat_template([ChatMessage("user", item["prompt"])])
    return item["prompt"]


def load_prompt_set(name: str, tokenizer) -> list[list[int]]:
    return [tokenizer.encode(prompt_text(item, tokenizer)) for item in load_prompt_items(name)]


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (or where the shorter ends); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def near_tie_refutation(target, prompt: list[int], prefix: list[int], got: int | None, expected: int | None,
                        margin: float) -> str | None:
    """Why a divergence is NOT a proved near-tie, or None when it is one.

    Target-only decoding generated `prefix`, then `expected`; a speculative run generated the same
    prefix, then `got`. The reference logits are replayed as target-only decoding computed them
    (the prompt in one pass, then one-token passes): they must choose `expected` (else decoding is
    not deterministic) and rank `got` within `margin` of it. The speculative run's cache was
    written by multi-token passes, which move such gaps by up to `margin` on the models measured,
    so a gap below it may flip. None for `got` or `expected`: that run ended there (its best
    end-of-sequence id counts). `target` (a Decoder) is reset."""
    target.reset()
    logits = target.prefill(prompt)
    for t in prefix:
        logits = target.append([t])[-1]
    logits = np.array(logits)
    target.reset()
    eos = max(target.spec.eos_ids, key=lambda i: logits[i]) if target.spec.eos_ids else None
    got, expected = (eos if got is None else got), (eos if expected is None else expected)
    if got is None or expected is None:
        return "one run ended where the other went on, and the model has no end-of-sequence id"
    if int(logits.argmax()) != expected:
        return f"replayed target-only decoding chooses {int(logits.argmax())}, not {expected}"
    gap = float(logits[expected] - logits[got])
    if gap >= margin:
        return f"the target ranks {got} {gap:.3f} below {expected}, not within {margin}"
    return None


def parse_speculator(name: str) -> tuple[str, bool]:
    """'draft' -> ('draft', True); 'draft@fixed' -> ('draft', False): k fixed at k_draft."""
    speculator, _, mode = name.partition("@")
    return speculator, mode != "fixed"


PeerRun = Callable[[list[int], int], float]  # (prompt ids, max_new_tokens) -> tokens per second


@dataclass
class PeerOutput:
    """One constrained run of a peer: tokens generated, wall seconds of the whole call (prefill
    included, as our stats' total_s), its text; `error` when the peer refused or failed."""
    n_tokens: int
    seconds: float
    text: str
    error: str | None = None
    detail: dict[str, float] | None = None  # the peer's own timings of the call (e.g. grammar compile, ms)

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.n_tokens and self.seconds > 0 else 0.0


ConstrainedPeerRun = Callable[[list[int], int, dict], PeerOutput]  # (ids, max_new_tokens, constraint)


@dataclass
class Interleaved:
    results: Results
    peer_rates: dict[str, list[list[float]]]  # peer -> [prompt][repeat] tokens per second
    peer_outputs: dict[str, list[list[PeerOutput]]] | None = None  # constrained peers: [prompt][repeat]


def run_interleaved(engine: Engine, prompts: list[list[int]], speculators: list[str], repeats: int,
                    max_new_tokens: int, k: int, tick: Callable[[], None] | None = None,
                    peers: dict[str, PeerRun] | None = None, ignore_eos: bool = False,
                    grammars: list[str] | None = None, peer_constraints: list[dict] | None = None) -> Interleaved:
    """Each repeat runs every prompt under every speculator, then every peer, back to back, so
    that a peer's per-prompt ratio to a speculator compares runs seconds apart. `ignore_eos`:
    every run of ours goes to max_new_tokens (peers are built to do the same), so that rates
    compare equal lengths rather than answers that happen to end early. `grammars`: prompt i's
    output constraint (a structured set; the grammar ends each output, so no ignore_eos there);
    `peer_constraints`: prompt i's constraint for the peers, which are then ConstrainedPeerRuns
    (their outputs kept in peer_outputs)."""
    peers = peers or {}
    run = Interleaved({s: [[] for _ in prompts] for s in speculators}, {p: [[] for _ in prompts] for p in peers},
                      {p: [[] for _ in prompts] for p in peers} if peer_constraints else None)
    for _ in range(repeats):
        for i, ids in enumerate(prompts):
            for s in speculators:
                speculator, adaptive = parse_speculator(s)
                grammar = grammars[i] if grammars else None
                params = SamplingParams(max_new_tokens=max_new_tokens, speculator=speculator, k_draft=k,
                                        adaptive_k=adaptive, ignore_eos=ignore_eos and grammar is None,
                                        grammar=grammar)
                run.results[s][i].append(engine.generate(ids, params))
                if tick:
                    tick()
            for name, peer in peers.items():
                if peer_constraints:
                    out = peer(ids, max_new_tokens, peer_constraints[i])
                    run.peer_outputs[name][i].append(out)
                    run.peer_rates[name][i].append(out.tokens_per_second)
                else:
                    run.peer_rates[name][i].append(peer(ids, max_new_tokens))
                if tick:
                    tick()
    return run


def peer_ratios(run: Interleaved, pairs: dict[str, list[str]]) -> dict[str, float]:
    """Median over (prompt, repeat) of our tokens/s over the peer's, for each of our speculators
    and the peer modes it is compared with; runs where either side generated nothing (an
    end-of-text first) have no rate and are left out."""
    out = {}
    for mine, peers in pairs.items():
        for theirs in peers:
            if mine in run.results and theirs in run.peer_rates:
                ratios = [r.stats.tokens_per_second / rate
                          for rs, rates in zip(run.results[mine], run.peer_rates[theirs])
                          for r, rate in zip(rs, rates) if rate > 0 and r.stats.tokens_per_second > 0]
                if ratios:
                    out[f"{mine}_vs_{theirs}"] = round(float(np.median(ratios)), 3)
    return out


def mode_speedups(run: Interleaved, prefix: str, modes: tuple[str, ...]) -> dict[str, float]:
    """For peers named `{prefix}_{mode}` (this engine under other settings): each mode's median
    over (prompt, repeat) of its tokens/s over `{prefix}_none`'s in the same prompt and repeat,
    i.e. each speculator's speedup on those settings; runs without a rate are left out."""
    base = run.peer_rates[f"{prefix}_none"]
    out = {}
    for mode in modes:
        ratios = [a / b for ra, rb in zip(run.peer_rates[f"{prefix}_{mode}"], base)
                  for a, b in zip(ra, rb) if a > 0 and b > 0]
        if ratios:
            out[mode] = round(float(np.median(ratios)), 3)
    return out


def cost_bound(a: float, k: int, verify_ratio: float, c: float) -> float:
    """Leviathan et al.'s speedup bound with the measured verify cost:
    E(a, k) / (verify(k + 1) / verify(1) + k c), c = draft pass / target pass."""
    return expected_tokens(a, k) / (verify_ratio + k * c) if k else 1.0


def best_bound(a: float, k_max: int, cost: CostModel, draft: bool) -> tuple[float, int]:
    """The bound at the best k in 0..k_max for the measured costs (k = 0: plain decoding)."""
    c = (cost.draft_s or 0.0) / cost.verify(1) if draft else 0.0
    return max((cost_bound(a, k, cost.verify(k + 1, draft) / cost.verify(1), c), k) for k in range(k_max + 1))


def summarize(results: Results, engine: Engine, k: int, startup: CostModel | None = None) -> dict[str, dict]:
    """Medians per speculator; speedup = median over (prompt, repeat) of time(none) / time(s).
    Prompts where target-only decoding ends at once (end-of-text first) have no rate and are
    left out of both (they gave every speculator a speedup of 0).

    Each single speculator gets the cost-model bound at its measured per-token acceptance and the
    best k: `bound` with the pass costs timed alone at start-up (`startup`, the strict one),
    `bound_online` with the engine's in-loop estimates (they include what alternating the two
    sessions costs)."""
    base = results.get("none")
    out = {}
    for s, per_prompt in results.items():
        flat = [r for runs in per_prompt for r in runs]
        accepted = sum(r.stats.accepted for r in flat)
        trials = accepted + sum(r.stats.rejections for r in flat)
        row = {
            "tok_s": float(np.median([r.stats.tokens_per_second for r in flat if r.stats.generated_tokens] or [0.0])),
            "tpj": sum(r.stats.decode_tokens for r in flat) / max(sum(r.stats.target_passes for r in flat), 1),
            "acceptance": accepted / max(sum(r.stats.proposed for r in flat), 1),
            "per_token_acceptance": accepted / trials if trials else 0.0,
        }
        if base is not None:
            ratios = [b.stats.total_s / r.stats.total_s * (r.stats.generated_tokens / max(b.stats.generated_tokens, 1))
                      for bs, rs in zip(base, per_prompt) for b, r in zip(bs, rs) if b.stats.generated_tokens]
            row["speedup"] = float(np.median(ratios)) if ratios else None
        kind = parse_speculator(s)[0]
        if kind in ("ngram", "draft"):
            a = row["per_token_acceptance"]
            row["bound_online"], _ = best_bound(a, k, engine.cost, kind == "draft")
            row["bound"], row["bound_k"] = best_bound(a, k, startup or engine.cost, kind == "draft")
            row["of_bound"] = row["speedup"] / row["bound"] if row.get("speedup") and row["bound"] else None
        out[s] = {key: (round(v, 3) if isinstance(v, float) else v) for key, v in row.items()}
    return out


def greedy_mismatches(results: Results) -> dict[str, list[int]]:
    """Prompts whose greedy token ids differ from `none` (callers then check for near-ties)."""
    base = results["none"]
    return {s: [i for i, (b, r) in enumerate(zip(base, runs)) if b[0].token_ids != r[0].token_ids]
            for s, runs in results.items() if s != "none"}
