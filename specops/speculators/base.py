"""The one-method speculator interface."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Proposal:
    ids: np.ndarray  # [k] proposed target-vocabulary ids (k may be 0)
    q: np.ndarray | None = None  # [k, target_vocab] draft probabilities; None = deterministic
    source: str = ""  # which speculator made it ("ngram", "draft")
    draft_passes: int = 0
    match: int = 0  # n-gram only: length of the suffix that matched (longer = likelier accepted)
    confidence: np.ndarray | None = None  # draft only: [k] the draft's probability of each proposal's top choice
    catchup: int = 0  # draft only: tokens its first pass fed beyond a round's usual two
    forced: int = 0  # leading ids forced by the request's grammar (proposed at acceptance 1)
    # sampling with a grammar: the draft's distribution [target_vocab] at position k, where the
    # grammar cut a drafted token; verification then draws from its residual (exactness)
    cut_q: np.ndarray | None = None

    @property
    def key(self) -> str:
        """The class whose acceptance the cost model tracks: 'draft', 'ngram1'..'ngramN'."""
        return f"{self.source}{self.match}" if self.match else self.source

    def head(self, n: int) -> "Proposal":
        """The first n proposals (n < k: a cut for length, which keeps the output distribution)."""
        if n >= len(self.ids):
            return self
        return Proposal(self.ids[:n], None if self.q is None else self.q[:n], self.source, self.draft_passes,
                        self.match, None if self.confidence is None else self.confidence[:n], self.catchup,
                        min(self.forced, n))

    @classmethod
    def empty(cls, source: str = "") -> "Proposal":
        return cls(np.zeros(0, dtype=np.int64), None, source)


class Speculator(Protocol):
    name: str

    def propose(self, context: np.ndarray, k: int, sampler=None) -> Proposal:
        """Up to k ids that may follow `context` (all committed ids, prompt included).

        `sampler` (specops.engine.sampling.Sampler) is given in sampling mode: a draft model
        then draws its proposals and returns their probabilities q."""
        ...

    def reset(self) -> None:
        """Forget any state kept from a previous request."""
        ...
