"""Adaptive k: each round, pick the speculator and k that maximise expected tokens per second.

Expected committed tokens with per-token acceptance a and k proposals (Leviathan et al.):
    E(a, k) = (1 - a^(k+1)) / (1 - a)
Time of a round: verify(k + 1) [+ k * draft pass]. verify(n) is measured, not assumed flat:
on CPU a 5-token pass costs about twice a 1-token pass.

Acceptance is tracked per class of proposal: the draft model, and the n-gram lookup by the
length of the suffix it matched (a 4-token match inside a copied passage is accepted far more
often than a 1-token match), so a round proposes many tokens where they are likely to hold
and none where they are not.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PRIOR = 0.5  # acceptance assumed before any evidence
DRIFT = 0.01  # per round, how far an unused cost estimate relaxes back
EXPLORE_EVERY = 16  # a choice declined this many rounds in a row is tried once (one token)


def expected_tokens(a: float, k: int, free: int = 0) -> float:
    """Committed tokens expected from k proposals, the first `free` of them forced by a grammar
    (acceptance 1), the others each accepted with probability a."""
    free = min(free, k)
    a = min(max(a, 0.0), 0.999)
    return free + (1 - a ** (k - free + 1)) / (1 - a)


@dataclass
class Ema:
    value: float
    weight: float = 0.1

    def update(self, x: float) -> None:
        self.value += self.weight * (x - self.value)


@dataclass
class CostModel:
    """Pass costs timed at start-up, scaled online; acceptance estimated online.

    verify_s[n - 1] is one target pass over n tokens; verify_after_draft_s the same pass right
    after draft passes, as in a draft round (dearer on CPU: the draft's session evicts the
    target's weights from cache and its threads sleep meanwhile). Inside the loop passes cost
    more than alone, by different factors in the two kinds of round; each table keeps the shape
    timed at start-up and learns one factor from every pass it predicted, so that a length
    not used lately is not judged on stale figures."""
    verify_s: list[float]  # [n - 1]: seconds of one target pass over n tokens, n = 1..K+1
    draft_s: float | None  # seconds of one draft pass; None = no draft model
    verify_after_draft_s: list[float] | None = None  # None: as verify_s
    acceptance: dict[str, Ema] = field(default_factory=dict)  # key (Proposal.key) -> estimate
    scale: dict[bool, Ema] = field(default_factory=lambda: {False: Ema(1.0, 0.05), True: Ema(1.0, 0.05)})
    # (greedy?, decile of the draft's top probability) -> acceptance of such a proposal
    calibration: dict[tuple[bool, int], Ema] = field(default_factory=dict)
    declined: dict[str, int] = field(default_factory=dict)  # key -> rounds declined in a row

    def __post_init__(self) -> None:
        self._draft_start = self.draft_s

    def _ema(self, key: str) -> Ema:
        if key not in self.acceptance:
            self.acceptance[key] = Ema(PRIOR)
        return self.acceptance[key]

    def estimate(self, key: str) -> float:
        """Current per-token acceptance estimate of a class of proposals."""
        return self._ema(key).value

    def _table(self, after_draft: bool) -> tuple[list[float], Ema]:
        """The start-up table a pass is predicted from, and that table's online factor."""
        after = after_draft and bool(self.verify_after_draft_s)
        return (self.verify_after_draft_s if after else self.verify_s), self.scale[after]

    def verify(self, n: int, after_draft: bool = False) -> float:
        """Expected seconds of a target pass over n tokens (beyond the table: its last entry)."""
        table, scale = self._table(after_draft)
        return table[min(n, len(table)) - 1] * scale.value

    def rate(self, key: str, k: int) -> float:
        """Expected committed tokens per second of a round proposing k tokens of class `key`
        ('draft' pays k draft passes on top of the verify pass)."""
        if k == 0:
            return 1.0 / self.verify(1)
        draft = key == "draft"
        cost = self.verify(k + 1, draft) + (k * self.draft_s if draft else 0.0)
        return expected_tokens(self._ema(key).value, k) / cost

    def best_k(self, key: str, k_max: int) -> tuple[int, float]:
        """The k in 0..k_max with the highest rate for `key`."""
        return max(((k, self.rate(key, k)) for k in range(k_max + 1)), key=lambda kr: kr[1])

    def observe_round(self, key: str, proposed: int, accepted: int) -> None:
        """Per-token acceptance: accepted over accepted plus the one rejection, if any."""
        if proposed == 0:
            return
        trials = accepted + (1 if accepted < proposed else 0)
        self._ema(key).update(accepted / trials)

    def due(self, key: str) -> bool:
        """Has `key` been declined EXPLORE_EVERY rounds in a row? An estimate only moves when
        its choice is made, so a choice judged poor (from the prior, or on a bad stretch) would
        otherwise never be judged again."""
        return self.declined.get(key, 0) >= EXPLORE_EVERY

    def chose(self, key: str, considered: list[str]) -> None:
        """Count the round for every choice considered but not made (`key` "" = a plain step)."""
        for other in considered:
            self.declined[other] = 0 if other == key else self.declined.get(other, 0) + 1
        if key != "draft":
            self.drift()

    def drift(self) -> None:
        """A round without the draft: its cost estimates relax back towards a plain round's and
        the start-up timing, so that one slow stretch does not keep the draft out for long."""
        self.scale[True].value += DRIFT * (self.scale[False].value - self.scale[True].value)
        if self.draft_s is not None:
            self.draft_s += DRIFT * (self._draft_start - self.draft_s)

    def observe_verify(self, n: int, seconds: float, after_draft: bool = False) -> None:
        table, scale = self._table(after_draft)
        if n <= len(table):
            scale.update(seconds / table[n - 1])

    def confidence_acceptance(self, confidence: float, greedy: bool) -> float:
        """Chance that a draft proposal made with this top probability is accepted (learned per
        decile; a greedy draft's top probability starts as its own estimate, measured close on
        the default pair: 0.43 accepted below 0.2, 0.72 in 0.6-0.7, 0.98 above 0.95)."""
        return self._calibration(confidence, greedy).value

    def observe_confidence(self, confidence: np.ndarray, accepted: int, greedy: bool) -> None:
        """Proposals 0..accepted-1 were accepted, proposal `accepted` (if any) rejected; later
        ones were never tested."""
        for i, c in enumerate(confidence[:accepted + 1]):
            self._calibration(float(c), greedy).update(1.0 if i < accepted else 0.0)

    def _calibration(self, confidence: float, greedy: bool) -> Ema:
        decile = min(int(confidence * 10), 9)
        if (greedy, decile) not in self.calibration:
            self.calibration[greedy, decile] = Ema((decile + 0.5) / 10, 0.05)
        return self.calibration[greedy, decile]

    def observe_draft(self, passes: int, seconds: float) -> None:
        if passes and self.draft_s is not None:
            self.draft_s += 0.05 * (seconds / passes - self.draft_s)


class DraftStopper:
    """How long one draft proposal gets, decided token by token as the draft writes it (the idea
    of SpecDec++ and of confidence-based draft lengths: stop where a rejection becomes likely).

    Each drafted token's top probability, calibrated online, is its chance of acceptance; the
    chance that all kept tokens survive gives the round's expected tokens. A token is kept, and
    another drafted, only while that raises the round's expected tokens per second."""

    def __init__(self, cost: CostModel, k_max: int, greedy: bool):
        self.cost, self.k_max, self.greedy = cost, k_max, greedy
        self.expected = 1.0  # tokens the round commits in expectation (1: the target's own)
        self.survive = 1.0  # chance that every kept token is accepted
        self.kept = 0
        self.passes = 1  # draft passes spent (the first one gives the first token)

    def _rate(self, expected: float, kept: int, passes: int) -> float:
        return expected / (self.cost.verify(kept + 1, after_draft=True) + passes * (self.cost.draft_s or 0.0))

    def include(self, confidence: float) -> bool:
        """Keep the token just drafted (with this top probability)?"""
        gain = self.survive * self.cost.confidence_acceptance(confidence, self.greedy)
        if self._rate(self.expected + gain, self.kept + 1, self.passes) < self._rate(self.expected, self.kept, self.passes):
            return False
        self.expected += gain
        self.survive = gain
        self.kept += 1
        return True

    def more(self) -> bool:
        """Draft one more token (one more draft pass)? Judged at the draft's average acceptance."""
        if self.kept >= self.k_max:
            return False
        gain = self.survive * self.cost.estimate("draft")
        if self._rate(self.expected + gain, self.kept + 1, self.passes + 1) <= self._rate(self.expected, self.kept, self.passes):
            return False
        self.passes += 1
        return True
