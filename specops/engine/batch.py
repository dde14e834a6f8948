"""Continuous batching: active sequences share every target pass.

Each round every active sequence proposes from its own speculator state (n-gram lookup, or
its own draft cache), the target verifies all proposals in ONE pass over the batch, and each
sequence accepts, commits and rewinds its own slot. A sequence leaves when it finishes or is
cancelled; nobody waits for the longest request.

On ragged passes (`BatchDecoder.ragged`: specops' attention operator) a pass holds exactly each
sequence's rows, no padding, and a joining sequence's prompt rides the same passes in chunks
(`PromptBudget`: as many prompt tokens as keep the running streams moving, a whole chunk when
nothing else decodes); every row is computed alike in any company, so no output depends on who
shared its passes. On onnxruntime's attention (the stock fallback) rows are padded to the
widest and a joining prompt runs alone first.

How wide the round is: a padded pass over n sequences of width S computes n x S rows, so one
long proposal makes every row pay for it (a ragged pass: the sum of the rows' real widths). The
round picks the width S that maximizes expected committed tokens per second over the whole batch,
    sum_i E(a_i, min(k_i, S - 1)) / cost(n x S rows),
where k_i is what sequence i has to offer, a_i the cost model's acceptance estimate for that
kind of proposal and cost() the target's measured pass curve. With one sequence this is the
single-sequence choice; as the batch widens, extra tokens cost more than they save and S
falls towards 1 (plain decoding), the literature's finding for speculation under load.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..runtime.batch_decoder import BatchDecoder
from ..runtime.tokenizer import TextTokenizer
from ..speculators.base import Proposal
from ..speculators.draft import DraftModelSpeculator
from ..speculators.ngram import NgramSpeculator
from ..speculators.successor import SuccessorTable
from .adaptive import CostModel, expected_tokens
from .constraint import Constraint, Grammars, constrain, up_to_eos
from .llm_engine import GenerationResult, first_token
from .logprobs import TokenLogprob, token_logprobs
from .output import OnTokens, Output
from .prompt_budget import PromptBudget
from .sampling import Sampler
from .sampling_params import SamplingParams
from .stats import GenerationStats
from .stopping import StopCheck
from .verify import accept_greedy, accept_sampled


@dataclass(eq=False)
class Sequence:
    """One request in the batch: its parameters, speculator state and output so far."""
    prompt_ids: list[int]
    params: SamplingParams
    on_tokens: OnTokens | None = None
    cancelled: Callable[[], bool] | None = None
    # set by the engine
    slot: int = -1
    result: GenerationResult | None = None
    stats: GenerationStats = field(default_factory=GenerationStats)
    context: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    n: int = 0  # committed tokens in `context` (prompt included); the last one is pending
    out: Output | None = None
    sampler: Sampler | None = None
    ngram: NgramSpeculator | None = None
    draft: DraftModelSpeculator | None = None
    constraint: Constraint | None = None  # the request's grammar, in step with the committed tokens
    started: float = 0.0
    prefilled: int = -1  # prompt tokens in the cache while a ragged batch reads the prompt (-1: read)

    @property
    def joining(self) -> bool:
        """Still reading its prompt (ragged batches read prompts in chunks beside the others' rows)."""
        return self.prefilled >= 0

    @property
    def done(self) -> bool:
        return self.result is not None


class BatchEngine:
    def __init__(self, target: BatchDecoder, tokenizer: TextTokenizer, cost: CostModel,
                 make_draft: Callable[[], DraftModelSpeculator] | None = None, ngram_n: tuple[int, int] = (1, 4),
                 prefill_chunk: int = 512):
        self.target, self.tokenizer, self.cost = target, tokenizer, cost
        self.make_draft, self.ngram_n, self.prefill_chunk = make_draft, ngram_n, prefill_chunk
        self.eos_ids = frozenset(target.spec.eos_ids)
        self.active: list[Sequence] = []  # active[i] holds slot i
        self._drafts: list[DraftModelSpeculator] = []  # idle draft caches, reused
        self.last_pass = (0, 0, 0)  # (decoding sequences, their rows, prompt tokens) of the latest pass
        self.budget = PromptBudget(chunk=prefill_chunk)  # prompt tokens beside decoding rows (ragged)
        self.budget.seed(cost.verify_s)
        self.successors = SuccessorTable()  # guesses for padding rows, from every sequence's tokens
        self.grammars = Grammars(tokenizer.tok.to_str(), target.vocab_size, self.eos_ids)

    @property
    def draft(self):
        """Not None when a draft model is loaded (as `Engine.draft`)."""
        return self.make_draft

    @property
    def capacity(self) -> int:
        return self.target.capacity

    @property
    def free(self) -> int:
        return self.target.max_batch - len(self.active)

    # -- joining and leaving --------------------------------------------------------------
    def add(self, seq: Sequence) -> Sequence:
        """Prefill `seq` into the next free slot and commit its first token (it may finish at
        once). Raises ValueError for a request the engine cannot run."""
        params = seq.params
        if params.speculator in ("draft", "hybrid") and self.make_draft is None:
            raise ValueError(f"speculator {params.speculator!r} needs a draft model, and none is loaded")
        if not seq.prompt_ids:
            raise ValueError("the prompt is empty")
        if len(seq.prompt_ids) >= self.capacity:
            raise ValueError(f"prompt has {len(seq.prompt_ids)} tokens; the context cap is {self.capacity}")
        if not self.free:
            raise RuntimeError("no free slot")
        seq.started = time.perf_counter()
        seq.stats = GenerationStats(speculator=params.speculator, prompt_tokens=len(seq.prompt_ids))
        seq.sampler = None if params.greedy else Sampler(params)
        seq.out = Output(self.tokenizer, StopCheck.for_request(self.eos_ids, params), seq.on_tokens,
                         params.logprobs is not None)
        seq.constraint = None if params.grammar is None else self.grammars.constraint(params.grammar)
        seq.context = np.empty(len(seq.prompt_ids) + params.max_new_tokens + 1, np.int64)
        seq.context[:len(seq.prompt_ids)] = seq.prompt_ids
        seq.n = len(seq.prompt_ids)
        seq.ngram = NgramSpeculator(*self.ngram_n) if params.speculator != "none" else None
        if params.speculator in ("draft", "hybrid", "auto") and self.make_draft is not None:
            seq.draft = self._drafts.pop() if self._drafts else self.make_draft()
            seq.draft.reset()
        used = {s.slot for s in self.active}
        seq.slot = next(i for i in range(self.target.max_batch) if i not in used) if self.target.ragged \
            else len(self.active)
        self.active.append(seq)
        self.target.lengths[seq.slot] = 0
        self.successors.observe(int(seq.prompt_ids[0]), seq.prompt_ids[1:])
        if self.target.ragged:  # its prompt rides the next rounds' passes (step)
            seq.prefilled = 0
            return seq
        logits = self.target.prefill(seq.slot, seq.prompt_ids, self.prefill_chunk)
        seq.stats.prefill_s = time.perf_counter() - seq.started
        self._commit(seq, *first_token(logits, params, seq.sampler, seq.constraint, self.eos_ids))
        self._reap()
        return seq

    def _commit(self, seq: Sequence, new: list[int], logprobs: list[TokenLogprob] | None = None) -> None:
        self.successors.observe(int(seq.context[seq.n - 1]), new)
        new, finish = seq.out.commit(new, logprobs)
        seq.context[seq.n:seq.n + len(new)] = new
        seq.n += len(new)
        seq.stats.ttft_s = seq.stats.ttft_s or time.perf_counter() - seq.started
        if finish is None and seq.n >= self.capacity:
            finish = "length"
        if finish is not None:
            self._finish(seq, finish)

    def _finish(self, seq: Sequence, reason: str) -> None:
        s = seq.stats
        s.generated_tokens = len(seq.out.ids)
        s.eos_committed = seq.out.eos_committed
        s.total_s = time.perf_counter() - seq.started
        seq.result = GenerationResult(seq.out.finish(), seq.out.ids, reason, s, seq.out.logprobs)

    def _reap(self) -> list[Sequence]:
        """Take finished sequences out; the last active slot moves into each freed one."""
        done = [s for s in self.active if s.done]
        for seq in done:
            if self.target.ragged:  # rows name their slots: nothing moves
                self.active.remove(seq)
                self.target.lengths[seq.slot] = 0
                self._release_draft(seq)
                continue
            last = self.active[-1]
            if last is not seq:
                self.target.move(last.slot, seq.slot)
                self.active[seq.slot] = last
                last.slot = seq.slot
            self.active.pop()
            self.target.lengths[len(self.active)] = 0
            self._release_draft(seq)
        return done

    def _release_draft(self, seq: Sequence) -> None:
        if seq.draft is not None:
            self._drafts.append(seq.draft)
            seq.draft = None

    # -- one round for everyone -------------------------------------------------------------
    def step(self) -> list[Sequence]:
        """One round over every active sequence; returns the sequences that finished."""
        for seq in self.active:
            if seq.cancelled is not None and seq.cancelled():
                self._finish(seq, "cancelled")
        finished = self._reap()
        if not self.active:
            return finished
        if self.target.ragged:
            return finished + self._ragged_step()
        t0 = time.perf_counter()
        proposals = [self._offer(seq) for seq in self.active]
        width = self.choose_width(proposals)
        proposals = [p.head(width - 1) for p in proposals]
        proposals = self._fill(proposals, max(width, self.target.min_rows))
        t1 = time.perf_counter()
        rows = [[int(seq.context[seq.n - 1]), *p.ids.tolist()] for seq, p in zip(self.active, proposals)]
        logits = self.target.forward(rows)
        t2 = time.perf_counter()
        n_rows = len(rows) * max(max(len(r) for r in rows), self.target.min_rows)
        self.cost.observe_verify(n_rows, t2 - t1)
        self.last_pass = (len(rows), n_rows, 0)
        for seq, p, lg in zip(self.active, proposals, logits):
            self._accept(seq, p, lg, t1 - t0, t2 - t1)
        return finished + self._reap()

    def _ragged_step(self) -> list[Sequence]:
        """One ragged pass: every decoding sequence's row (its pending token and proposal, no
        padding) and the joining prompts' next chunks, as many prompt tokens as `budget` allows
        beside the decoding rows (a whole chunk when nothing else decodes)."""
        t0 = time.perf_counter()
        decoding = [s for s in self.active if not s.joining]
        proposals = [self._offer(seq) for seq in decoding]
        if decoding:
            width = self.choose_width(proposals)
            proposals = [p.head(width - 1) for p in proposals]
        rows = [[int(seq.context[seq.n - 1]), *p.ids.tolist()] for seq, p in zip(decoding, proposals)]
        n_rows = sum(len(r) for r in rows)
        chunks = self._prompt_chunks(n_rows)
        t1 = time.perf_counter()
        logits = self.target.run([s.slot for s in decoding] + [s.slot for s, _ in chunks],
                                 rows + [c for _, c in chunks],
                                 [len(r) for r in rows] + [int(s.prefilled + len(c) == len(s.prompt_ids))
                                                           for s, c in chunks])
        t2 = time.perf_counter()
        prompt_tokens = sum(len(c) for _, c in chunks)
        self.budget.observe(n_rows, prompt_tokens, sum(len(c) * s.prefilled + len(c) * (len(c) - 1) // 2
                                                       for s, c in chunks), t2 - t1)
        if not chunks:
            self.cost.observe_verify(n_rows, t2 - t1)
        self.last_pass = (len(decoding), n_rows, prompt_tokens)
        for seq, p, lg in zip(decoding, proposals, logits):
            self._accept(seq, p, lg, t1 - t0, t2 - t1)
        for (seq, chunk), lg in zip(chunks, logits[len(decoding):]):
            seq.prefilled += len(chunk)
            if seq.prefilled == len(seq.prompt_ids):
                seq.prefilled = -1
                seq.stats.prefill_s = time.perf_counter() - seq.started
                self._commit(seq, *first_token(lg[-1], seq.params, seq.sampler, seq.constraint, self.eos_ids))
        return self._reap()

    def _prompt_chunks(self, decoding_rows: int) -> list[tuple[Sequence, list[int]]]:
        """The joining prompts' tokens for this pass, earliest joiner first."""
        joining = [s for s in self.active if s.joining]
        if not joining:
            return []
        first = joining[0]
        left = self.budget.tokens(decoding_rows, first.prefilled, sum(len(s.prompt_ids) - s.prefilled for s in joining))
        chunks = []
        for seq in joining:
            m = min(left, len(seq.prompt_ids) - seq.prefilled)
            if m <= 0:
                break
            chunks.append((seq, [int(t) for t in seq.prompt_ids[seq.prefilled:seq.prefilled + m]]))
            left -= m
        return chunks

    def _accept(self, seq: Sequence, p: Proposal, raw: np.ndarray, draft_s: float, verify_s: float) -> None:
        """One sequence's part of the round: accept against its rows of the pass ([k + 1, V], masked
        by its grammar if it has one), rewind its slot, count, commit."""
        lg = raw if seq.constraint is None else seq.constraint.mask(raw, p.ids)
        if seq.sampler is None:
            j, nxt = accept_greedy(p.ids, lg.argmax(axis=-1))
        else:
            j, nxt = accept_sampled(p.ids, seq.sampler.probs(lg), p.q, seq.sampler.rng, p.cut_q)
        self.target.rewind(seq.slot, seq.n + j)  # keep pending + the j accepted rows
        k, f = len(p.ids), p.forced
        s = seq.stats
        s.record_round(p.source, k, j, f)
        s.draft_passes += p.draft_passes
        s.draft_s += draft_s
        s.verify_s += verify_s
        if p.source and k > f and j >= f:  # forced tokens are not the speculator's
            self.cost.observe_round(p.key, k - f, j - f)
        new = [*p.ids[:j].tolist(), nxt]
        if seq.constraint is not None:
            seq.constraint.commit(up_to_eos(new, self.eos_ids))
        logprobs = None if seq.params.logprobs is None else token_logprobs(raw, new, seq.params.logprobs)
        self._commit(seq, new, logprobs)

    def _fill(self, proposals: list[Proposal], row_width: int) -> list[Proposal]:
        """Rows with nothing to propose are padded to the round's width anyway: they carry
        guesses from the successor table instead (free proposals; never for `none`)."""
        out = []
        for seq, p in zip(self.active, proposals):
            room = min(row_width - 1, seq.params.k_draft, self.capacity - seq.n - 1,
                       seq.params.max_new_tokens - len(seq.out.ids) - 1)
            if not len(p.ids) and room > 0 and seq.params.speculator != "none":
                guesses = self.successors.chain(int(seq.context[seq.n - 1]), room)
                if guesses:
                    p = Proposal(np.asarray(guesses, np.int64), None, "successor")
                    if seq.constraint is not None:
                        p = constrain(p, [], seq.constraint)
            out.append(p)
        return out

    def _offer(self, seq: Sequence) -> Proposal:
        """What the sequence could propose this round (the round's width may cut it): under a
        grammar, its forced tokens and then the speculator's, cut where the grammar forbids."""
        params = seq.params
        room = self.capacity - seq.n
        k_max = max(min(params.k_draft, room - 1, params.max_new_tokens - len(seq.out.ids) - 1), 0)
        if k_max == 0 or params.speculator == "none":
            return Proposal.empty()
        if seq.constraint is None:
            return self._speculate(seq, seq.context[:seq.n], k_max)
        forced = seq.constraint.forced()[:k_max]
        context = np.concatenate([seq.context[:seq.n], forced]) if forced else seq.context[:seq.n]
        proposal = self._speculate(seq, context, k_max - len(forced)) if k_max > len(forced) else Proposal.empty()
        return constrain(proposal, forced, seq.constraint)

    def _speculate(self, seq: Sequence, context: np.ndarray, k_max: int) -> Proposal:
        """The speculator's proposal after `context`."""
        params = seq.params
        lookup = seq.ngram.propose(context, k_max) if seq.ngram is not None and params.speculator != "draft" \
            else Proposal.empty()
        if len(lookup.ids) and params.speculator in ("ngram", "hybrid", "auto"):
            if params.speculator != "auto" or seq.draft is None:
                return lookup
            if self.cost.estimate(lookup.key) >= self.cost.estimate("draft"):
                return lookup
        if seq.draft is not None and params.speculator in ("draft", "hybrid", "auto"):
            # the draft writes what the batch's width could use at most; choose_width cuts it
            return seq.draft.propose(context, min(k_max, self._draft_budget()), seq.sampler)
        return lookup

    def _draft_budget(self) -> int:
        """Longest draft proposal worth writing in a batch of the current size (each extra
        token costs a draft pass and widens every row)."""
        n = len(self.active)
        a = self.cost.estimate("draft")
        best, best_rate = 0, 1.0 / self.rows_cost(self._pass_rows(n, 1))
        for k in range(1, 17):
            rate = (n - 1 + expected_tokens(a, k)) / (self.rows_cost(self._pass_rows(n, k + 1))
                                                    + k * (self.cost.draft_s or 0.0))
            if rate > best_rate:
                best, best_rate = k, rate
        return best

    def rows_cost(self, rows: int) -> float:
        """Seconds of one target pass over `rows` rows: the measured table, extended linearly
        past its end by its last step."""
        table = self.cost.verify_s
        scale = self.cost.scale[False].value
        if rows <= len(table):
            return table[rows - 1] * scale
        step = (table[-1] - table[-2]) if len(table) > 1 else table[-1]
        return (table[-1] + step * (rows - len(table))) * scale

    def choose_width(self, proposals: list[Proposal]) -> int:
        """The round's row width S (>= 1): the best expected tokens per second over the batch.
        A request with adaptive_k off keeps its whole proposal (benchmarks, tests)."""
        n = len(proposals)
        fixed = max((len(p.ids) + 1 for p, s in zip(proposals, self.active) if not s.params.adaptive_k
                     and s.params.speculator != "auto"), default=1)
        longest = max(len(p.ids) for p in proposals) + 1
        rates = []
        for width in range(fixed, longest + 1):
            expected = sum(expected_tokens(self.cost.estimate(p.key), min(len(p.ids), width - 1), p.forced)
                           if len(p.ids) else 1.0 for p in proposals)
            rows = sum(min(len(p.ids), width - 1) + 1 for p in proposals) if self.target.ragged \
                else n * max(width, self.target.min_rows)
            rates.append((expected / self.rows_cost(rows), width))
        return max(rates)[1]

    def _pass_rows(self, n: int, width: int) -> int:
        """Rows of a pass over n sequences when one of them runs `width` tokens: ragged passes pay
        for real rows only, padded ones for n rows of the widest (at least min_rows)."""
        return n - 1 + width if self.target.ragged else n * max(width, self.target.min_rows)

    # -- whole generations (tests, benchmarks, warm-up) ------------------------------------
    def generate(self, prompt_ids: list[int], params: SamplingParams, on_tokens: OnTokens | None = None,
                 cancelled: Callable[[], bool] | None = None) -> GenerationResult:
        """One sequence to the end (with no other in the batch), as `Engine.generate`."""
        if self.active:
            raise RuntimeError("generate() runs one sequence alone; the batch is busy")
        return self.generate_all([Sequence(list(prompt_ids), params, on_tokens, cancelled)])[0]

    def generate_all(self, sequences: list[Sequence], join_at: list[int] | None = None) -> list[GenerationResult]:
        """Run `sequences` to the end, sequence i joining at round join_at[i] (default: as
        soon as a slot is free, in order)."""
        join_at = join_at or [0] * len(sequences)
        waiting = sorted(range(len(sequences)), key=lambda i: join_at[i])
        rounds = 0
        while waiting or self.active:
            while waiting and self.free and join_at[waiting[0]] <= rounds:
                self.add(sequences[waiting.pop(0)])
            self.step()
            rounds += 1
        return [s.result for s in sequences]
