"""Adaptive k: each round, pick the speculator and k that maximise expected tokens per second.

Expected committed tokens with per-token acceptance a and k proposals (Leviathan et al.):
    E(a, k) = (1 - a^(k+1)) / (1 - a)
Time of a round: verify(k + 1) [+ k * draft pass]. verify(n) is measured, not assumed flat:
on CPU a 5-token pass costs about twice a 1-token pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field

PRIOR = 0.5  # acceptance assumed before any evidence, and drifted back to when unused
DRIFT = 0.01


def expected_tokens(a: float, k: int) -> float:
    a = min(max(a, 0.0), 0.999)
    return (1 - a ** (k + 1)) / (1 - a)


@dataclass
class Ema:
    value: float
    weight: float = 0.1

    def update(self, x: float) -> None:
        self.value += self.weight * (x - self.value)


@dataclass
class CostModel:
    verify_s: list[float]  # [n - 1]: seconds of one target pass over n tokens, n = 1..K+1
    draft_s: float | None  # seconds of one draft pass; None = no draft model
    acceptance: dict[str, Ema] = field(default_factory=lambda: {"ngram": Ema(PRIOR), "draft": Ema(PRIOR)})

    def verify(self, n: int) -> float:
        n = min(n, len(self.verify_s))
        return self.verify_s[n - 1]

    def rate(self, source: str, k: int) -> float:
        """Expected committed tokens per second of a round proposing k tokens from `source`."""
        if k == 0:
            return 1.0 / self.verify(1)
        cost = self.verify(k + 1) + (k * self.draft_s if source == "draft" else 0.0)
        return expected_tokens(self.acceptance[source].value, k) / cost

    def best_k(self, source: str, k_max: int) -> tuple[int, float]:
        """The k in 0..k_max with the highest rate for `source`."""
        return max(((k, self.rate(source, k)) for k in range(k_max + 1)), key=lambda kr: kr[1])

    def observe_round(self, source: str, proposed: int, accepted: int) -> None:
        """Per-token acceptance: accepted over accepted plus the one rejection, if any."""
        if proposed == 0:
            return
        trials = accepted + (1 if accepted < proposed else 0)
        self.acceptance[source].update(accepted / trials)
        for name, other in self.acceptance.items():
            if name != source:  # an unused estimate drifts back to the prior, so it is retried
                other.value += DRIFT * (PRIOR - other.value)

    def observe_verify(self, n: int, seconds: float) -> None:
        if n <= len(self.verify_s):
            self.verify_s[n - 1] += 0.05 * (seconds - self.verify_s[n - 1])

    def observe_draft(self, passes: int, seconds: float) -> None:
        if passes and self.draft_s is not None:
            self.draft_s += 0.05 * (seconds / passes - self.draft_s)
