"""Per-request generation parameters (engine settings live in specops.config)."""
from __future__ import annotations

from dataclasses import dataclass

SPECULATORS = ("none", "ngram", "draft", "hybrid", "auto")


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    speculator: str = "auto"
    k_draft: int = 4  # upper bound on proposed tokens per round
    # True: each round the cost model picks k in 0..k_draft (0 = a plain step). False: every
    # round proposes all the speculator offers up to k_draft (benchmarks and tests). `auto`
    # always adapts: it also picks the speculator.
    adaptive_k: bool = True
    # True: an end-of-sequence id is committed like any other token and generation runs to
    # max_new_tokens (stop strings still stop), so that benchmarks compare equal lengths (vLLM's
    # `ignore_eos`): a run whose answer ends early would look faster or slower by accident.
    ignore_eos: bool = False
    # a checked llguidance grammar (specops.engine.constraint.Grammars): every committed token
    # is one the grammar allows, and generation ends where it is complete
    grammar: str | None = None
    # None: no log-probabilities; n >= 0: each committed token's, with the n likeliest alternatives
    logprobs: int | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if self.k_draft < 0:
            raise ValueError("k_draft must be >= 0")
        if self.grammar is not None and self.ignore_eos:
            raise ValueError("ignore_eos cannot be combined with a grammar: the grammar ends the output")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise ValueError("logprobs (the number of alternatives) must be in 0..20")
        if self.speculator not in SPECULATORS:
            raise ValueError(f"speculator must be one of {', '.join(SPECULATORS)}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
