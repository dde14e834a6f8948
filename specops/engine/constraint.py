"""Grammar constraints (llguidance): which tokens may come next, and which the grammar forces.

`Grammars` turns a request's constraint (JSON schema, regex, Lark or GBNF grammar) into an
llguidance grammar, checked once against the target's tokenizer; each constrained sequence
then gets a `Constraint`, a matcher that follows its committed tokens. In a round the engine
asks it for
- `forced()`: the tokens the grammar forces next (llguidance's fast-forward tokens), proposed
  ahead of the speculator's own at acceptance 1 (they still go through verification, so they
  never change the output: a forced string the target would tokenize differently is rejected);
- `valid_prefix(ids)`: how many proposals the grammar allows (the rest is cut before the pass);
- `mask(logits, ids)`: the verify pass's logits [k + 1, V] with the tokens the grammar forbids at
  each position set to -inf (the matcher advanced along the proposal, then rolled back);
- `commit(ids)`: advance by the round's committed tokens.
Greedy decoding under a constraint is the target's greedy under the mask; sampling draws from the
target's distribution renormalized over the allowed tokens.
"""
from __future__ import annotations

import llguidance as llg
import llguidance.numpy as llg_np
import numpy as np

from ..speculators.base import Proposal

# Compact JSON (no optional whitespace): fewer tokens, more of them forced, and a small model
# cannot wander off into endless spaces and newlines between the values.
JSON_OPTIONS = {"whitespace_flexible": False}
ANY_JSON_OBJECT = {"type": "object"}
COMPILED_CACHE = 64  # grammars kept compiled (requests often repeat a schema)


class GrammarError(ValueError):
    """A schema, regex or grammar that does not compile; the message is the compiler's."""


class Grammars:
    """Compiles constraints for one target tokenizer (built from its tokenizer.json)."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_ids):
        # vocab_size is the logits width (it may exceed the tokenizer's own vocabulary)
        self.tokenizer = llg.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=sorted(eos_ids))
        self.vocab_size = vocab_size
        self._compiled: dict[str, llg.LLMatcher] = {}  # grammar -> a fresh matcher, copied per sequence

    # -- request constraints -> checked llguidance grammars ---------------------------------
    def json_schema(self, schema: dict | None) -> str:
        """`schema` None: any JSON object (OpenAI's json_object)."""
        try:
            grammar = llg.LLMatcher.grammar_from_json_schema(ANY_JSON_OBJECT if schema is None else schema,
                                                             defaults=JSON_OPTIONS)
        except ValueError as err:
            raise GrammarError(str(err)) from None
        return self.check(grammar)

    def regex(self, pattern: str) -> str:
        return self.check(llg.LLMatcher.grammar_from_regex(pattern))

    def grammar(self, text: str) -> str:
        """A Lark grammar (llguidance's dialect, with `%json {...}`) or a GBNF grammar (llama.cpp's)."""
        try:
            grammar = llg.grammar_from("grammar", text)
        except ValueError as err:
            raise GrammarError(str(err)) from None
        return self.check(grammar)

    def check(self, grammar: str) -> str:
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        if is_error:
            raise GrammarError(messages[0].strip())
        return grammar

    def constraint(self, grammar: str) -> "Constraint":
        """A matcher for one sequence (building one takes milliseconds, copying one microseconds)."""
        if grammar not in self._compiled:
            if len(self._compiled) >= COMPILED_CACHE:
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[grammar] = llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        return Constraint(self._compiled[grammar].deep_copy(), self.vocab_size)

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for (for logprobs: a token may hold part of a character)."""
        return self.tokenizer.decode_bytes([int(token)])


class Constraint:
    """One sequence's matcher, in step with its committed tokens."""

    def __init__(self, matcher: llg.LLMatcher, vocab_size: int):
        if matcher.is_error():
            raise GrammarError(matcher.get_error())
        self.matcher, self.vocab_size = matcher, vocab_size
        self._bits = llg_np.allocate_token_bitmask(1, vocab_size)  # [1, ceil(V / 32)] int32

    def allowed(self) -> np.ndarray:
        """[V] bool: the tokens the grammar allows now (EOS where it may end)."""
        llg_np.fill_next_token_bitmask(self.matcher, self._bits)
        return np.unpackbits(self._bits.view(np.uint8), bitorder="little")[:self.vocab_size].astype(bool)

    def forced(self) -> list[int]:
        return list(self.matcher.compute_ff_tokens())

    def valid_prefix(self, ids) -> int:
        """How many of `ids` the grammar allows in a row from the current state."""
        return self.matcher.validate_tokens([int(t) for t in ids]) if len(ids) else 0

    def mask(self, logits: np.ndarray, proposal) -> np.ndarray:
        """logits [>= k + 1, V] of a pass over [pending, *proposal] (every proposal allowed) -> a new
        array [k + 1, V] where row i keeps only the tokens allowed after proposal[:i]."""
        logits = logits[:len(proposal) + 1]
        allowed = np.empty(logits.shape, bool)
        for i in range(len(proposal) + 1):
            allowed[i] = self.allowed()
            if i < len(proposal):
                self._consume([int(proposal[i])])
        if len(proposal):
            self.matcher.rollback(len(proposal))
        return np.where(allowed, logits, -np.inf)

    def commit(self, ids) -> None:
        self._consume([int(t) for t in ids])

    def _consume(self, ids: list[int]) -> None:
        for tok in ids:  # one by one: consume_tokens refuses an EOS once the grammar is complete
            if not self.matcher.consume_token(tok):
                raise RuntimeError(f"the grammar refused token {tok}: {self.matcher.get_error()}")

    @property
    def done(self) -> bool:
        """The grammar is complete: only an end-of-sequence token may follow."""
        return self.matcher.is_stopped()


def constrain(proposal: Proposal, forced: list[int], constraint: Constraint) -> Proposal:
    """The round's proposal under a grammar: the forced tokens, then the speculator's own (made
    after them), cut at the first token the grammar forbids. A sampled draft token cut here
    leaves its distribution in `cut_q`: verification draws from its residual, as if the target
    had rejected it (it would have: the masked target gives it probability 0)."""
    f = len(forced)
    ids = np.concatenate([np.asarray(forced, np.int64), proposal.ids])
    keep = constraint.valid_prefix(ids) - f
    if keep < 0:
        raise RuntimeError(f"the grammar refused its own forced tokens {forced}")
    q = cut_q = None
    if proposal.q is not None:
        one_hot = np.zeros((f, proposal.q.shape[1]), proposal.q.dtype)
        one_hot[np.arange(f), forced] = 1.0
        q = np.concatenate([one_hot, proposal.q[:keep]])
        cut_q = proposal.q[keep] if keep < len(proposal.ids) else None
    source = proposal.source if keep else ("grammar" if f else proposal.source)
    confidence = None if proposal.confidence is None else proposal.confidence[:keep]
    return Proposal(ids[:f + keep], q, source, proposal.draft_passes, proposal.match, confidence,
                    proposal.catchup, f, cut_q)


def up_to_eos(ids: list[int], eos_ids) -> list[int]:
    """The committed tokens the matcher follows: nothing after an end-of-sequence token."""
    for i, tok in enumerate(ids):
        if tok in eos_ids:
            return ids[:i + 1]
    return ids
