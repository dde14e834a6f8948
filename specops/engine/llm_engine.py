"""The engine: prefill the prompt, then rounds of propose -> verify -> accept -> commit.

Cache invariant: the target cache holds every committed token but the last one, `pending`,
whose logits are not computed yet. A round feeds [pending, d1..dk] in one target pass,
gets logits [k + 1, V] (row i predicts the token after position i), accepts j proposals,
appends the target's own next token, and rewinds the cache to drop the rejected rows.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..runtime.decoder import Decoder
from ..runtime.tokenizer import TextTokenizer
from ..speculators.base import Proposal
from ..speculators.draft import DraftModelSpeculator
from ..speculators.ngram import NgramSpeculator
from ..speculators.successor import SuccessorTable
from .adaptive import CostModel, DraftStopper
from .constraint import Constraint, Grammars, constrain, up_to_eos
from .logprobs import TokenLogprob, token_logprobs
from .output import OnTokens, Output
from .sampling import Sampler
from .sampling_params import SamplingParams
from .stats import GenerationStats
from .stopping import StopCheck
from .verify import accept_greedy, accept_sampled


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or stop string), "length" (budget or context; always with ignore_eos
    # unless a stop string ends it first), "cancelled"
    stats: GenerationStats
    logprobs: list[TokenLogprob] | None = None  # one per token id, when the request asked for them


class Engine:
    def __init__(self, target: Decoder, tokenizer: TextTokenizer, draft: DraftModelSpeculator | None = None,
                 ngram: NgramSpeculator | None = None, cost_model: CostModel | None = None,
                 prefill_chunk: int = 512):
        self.target, self.tokenizer, self.draft = target, tokenizer, draft
        self.ngram = ngram or NgramSpeculator()
        self.prefill_chunk = prefill_chunk
        self.eos_ids = frozenset(target.spec.eos_ids)
        # uncalibrated: flat verify cost and a free draft, so every round proposes all it can
        self.cost = cost_model or CostModel(verify_s=[1.0], draft_s=0.0 if draft is not None else None)
        self.successors = SuccessorTable()  # guesses for the padding row of a consistent plain step
        self.grammars = Grammars(tokenizer.tok.to_str(), target.vocab_size, self.eos_ids)

    @property
    def capacity(self) -> int:
        return self.target.capacity

    # -- one generation -------------------------------------------------------------------
    def generate(self, prompt_ids: list[int], params: SamplingParams, on_tokens: OnTokens | None = None,
                 cancelled: Callable[[], bool] | None = None) -> GenerationResult:
        if params.speculator in ("draft", "hybrid") and self.draft is None:
            raise ValueError(f"speculator {params.speculator!r} needs a draft model, and none is loaded")
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) >= self.capacity:
            raise ValueError(f"prompt has {len(prompt_ids)} tokens; the context cap is {self.capacity}")
        start = time.perf_counter()
        stats = GenerationStats(speculator=params.speculator, prompt_tokens=len(prompt_ids))
        sampler = None if params.greedy else Sampler(params)
        out = Output(self.tokenizer, StopCheck.for_request(self.eos_ids, params), on_tokens, params.logprobs is not None)
        constraint = None if params.grammar is None else self.grammars.constraint(params.grammar)
        self._reset()
        # context: prompt + committed tokens; the last one is `pending` (not in the target cache)
        context = np.empty(len(prompt_ids) + params.max_new_tokens + 1, dtype=np.int64)
        context[:len(prompt_ids)] = prompt_ids
        n = len(prompt_ids)

        self.successors.observe(int(prompt_ids[0]), prompt_ids[1:])
        logits = self.target.prefill(prompt_ids, self.prefill_chunk)
        stats.prefill_s = time.perf_counter() - start
        new, logprobs = first_token(logits, params, sampler, constraint, self.eos_ids)
        while True:
            self.successors.observe(int(context[n - 1]), new)
            new, finish = out.commit(new, logprobs)
            context[n:n + len(new)] = new
            n += len(new)
            stats.ttft_s = stats.ttft_s or time.perf_counter() - start
            if finish:
                break
            if cancelled is not None and cancelled():
                finish = "cancelled"
                break
            if n >= self.capacity:
                finish = "length"
                break
            new, logprobs = self._round(context[:n], params, sampler, stats, len(out.ids), constraint)
        stats.generated_tokens = len(out.ids)
        stats.eos_committed = out.eos_committed
        stats.total_s = time.perf_counter() - start
        return GenerationResult(out.finish(), out.ids, finish, stats, out.logprobs)

    def _reset(self) -> None:
        self.target.reset()
        self.ngram.reset()
        if self.draft is not None:
            self.draft.reset()

    # -- one round ------------------------------------------------------------------------
    def _round(self, context: np.ndarray, params: SamplingParams, sampler: Sampler | None,
               stats: GenerationStats, n_generated: int,
               constraint: Constraint | None) -> tuple[list[int], list[TokenLogprob] | None]:
        room = self.capacity - len(context)  # the verify pass adds k + 1 rows to len(context) - 1
        k_max = max(min(params.k_draft, room - 1, params.max_new_tokens - n_generated - 1), 0)
        t0 = time.perf_counter()
        proposal = self._proposal(context, k_max, params, sampler, constraint)
        t1 = time.perf_counter()
        # [k + 1, V], read before the next pass (so no copy)
        raw = self.target.append([int(context[-1]), *proposal.ids.tolist()], copy=False)
        t2 = time.perf_counter()
        logits = raw if constraint is None else constraint.mask(raw, proposal.ids)
        if sampler is None:
            j, nxt = accept_greedy(proposal.ids, logits.argmax(axis=-1))
        else:
            j, nxt = accept_sampled(proposal.ids, sampler.probs(logits), proposal.q, sampler.rng, proposal.cut_q)
        self.target.rewind(len(context) + j)  # keep pending + the j accepted rows
        new = [*proposal.ids[:j].tolist(), nxt]
        if constraint is not None:
            constraint.commit(up_to_eos(new, self.eos_ids))
        self._record(proposal, j, stats, t1 - t0, t2 - t1, sampler is None)
        return new, None if params.logprobs is None else token_logprobs(raw, new, params.logprobs)

    def _proposal(self, context: np.ndarray, k_max: int, params: SamplingParams, sampler: Sampler | None,
                  constraint: Constraint | None) -> Proposal:
        """Up to k_max tokens to verify: under a grammar, its forced tokens first (free), the
        speculator's after them, cut where the grammar forbids."""
        forced = constraint.forced()[:k_max] if constraint is not None and params.speculator != "none" else []
        proposal = self._propose(np.concatenate([context, forced]) if forced else context, k_max - len(forced),
                                 params, sampler)
        if not len(proposal.ids) and not forced and k_max and self.target.min_rows > 1 and params.speculator != "none":
            # the step runs two rows wide anyway: the second row carries a free guess
            guesses = self.successors.chain(int(context[-1]), min(self.target.min_rows - 1, k_max))
            if guesses:
                proposal = Proposal(np.asarray(guesses, np.int64), None, "successor")
        return proposal if constraint is None else constrain(proposal, forced, constraint)

    def _record(self, proposal: Proposal, j: int, stats: GenerationStats, draft_s: float, verify_s: float,
                greedy: bool) -> None:
        """Count the round and teach the cost model (forced tokens are not the speculator's)."""
        k, f = len(proposal.ids), proposal.forced
        stats.record_round(proposal.source, k, j, f)
        stats.draft_passes += proposal.draft_passes
        stats.draft_s += draft_s
        stats.verify_s += verify_s
        self.cost.observe_verify(k + 1, verify_s, after_draft=proposal.draft_passes > 0)
        if j < f:  # a forced token was rejected: the speculator's were not tested
            return
        if proposal.source and k > f:
            self.cost.observe_round(proposal.key, k - f, j - f)
        if proposal.confidence is not None:
            self.cost.observe_confidence(proposal.confidence, j - f, greedy)
        if proposal.draft_passes and not proposal.catchup:  # a long catch-up is not a pass's cost
            self.cost.observe_draft(proposal.draft_passes, draft_s)

    def _propose(self, context: np.ndarray, k_max: int, params: SamplingParams, sampler: Sampler | None) -> Proposal:
        """The round's proposal. `ngram` and `draft` use their own speculator, `hybrid` the draft
        only where the lookup finds nothing, `auto` whichever promises more; with adaptive k the
        cost model also picks k (0 = a plain step), else every proposal is as long as it can be."""
        speculator = params.speculator
        if k_max == 0 or speculator == "none":
            return Proposal.empty()
        lookup = self.ngram.propose(context, k_max) if speculator != "draft" else Proposal.empty()
        found = len(lookup.ids) > 0
        use_draft = self.draft is not None and (speculator in ("draft", "auto") or (speculator == "hybrid" and not found))
        if not params.adaptive_k and speculator != "auto":
            if found:
                return lookup
            return self.draft.propose(context, k_max, sampler) if use_draft else Proposal.empty()
        options = [("", 0, self.cost.rate("none", 0))]
        if found:
            options.append((lookup.key, *self.cost.best_k(lookup.key, len(lookup.ids))))
        if use_draft:
            options.append(("draft", *self.cost.best_k("draft", k_max)))
        key, k, _ = max(options, key=lambda o: o[2])
        due = [o for o in options[1:] if o[0] != key and self.cost.due(o[0])]
        if due:  # explore: a choice declined for long is tried with at least one token
            key, k = due[0][0], max(due[0][1], 1)
        self.cost.chose(key if k else "", [o[0] for o in options[1:]])
        if k == 0:
            return Proposal.empty()
        if key == "draft":  # the stopper sets the length, token by token, up to k_max
            return self.draft.propose(context, k_max, sampler, DraftStopper(self.cost, k_max, sampler is None))
        return Proposal(lookup.ids[:k], None, lookup.source, match=lookup.match)


def first_token(logits: np.ndarray, params: SamplingParams, sampler: Sampler | None, constraint: Constraint | None,
                eos_ids) -> tuple[list[int], list[TokenLogprob] | None]:
    """The token the prefill's logits [V] choose (under the grammar, if any), with its logprobs."""
    masked = logits if constraint is None else constraint.mask(logits[None], [])[0]
    tok = int(np.argmax(masked)) if sampler is None else sampler.draw(sampler.probs(masked[None])[0])
    if constraint is not None:
        constraint.commit(up_to_eos([tok], eos_ids))
    return [tok], None if params.logprobs is None else token_logprobs(logits[None], [tok], params.logprobs)
