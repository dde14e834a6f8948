"""What one generation did: counts and times, returned by the engine for callers to report."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class GenerationStats:
    speculator: str = "none"
    prompt_tokens: int = 0
    generated_tokens: int = 0
    # ended at an EOS id the target chose (not in generated_tokens); never with ignore_eos, where
    # EOS ids are generated tokens like any other
    eos_committed: bool = False
    target_passes: int = 0  # verify passes during decoding (prefill not counted)
    draft_passes: int = 0
    rounds: int = 0
    proposed: int = 0
    accepted: int = 0
    rejections: int = 0  # rounds whose proposal was cut short (at most one per round)
    accepted_per_position: list[int] = field(default_factory=list)  # [i]: rounds accepting > i
    proposals_by: dict[str, int] = field(default_factory=dict)  # rounds per speculator used
    # tokens a grammar forced (llguidance's fast-forward tokens), proposed ahead of the speculator's
    # and included in proposed / accepted; a forced string the target tokenizes otherwise is rejected
    forced_proposed: int = 0
    forced_accepted: int = 0
    prefill_s: float = 0.0
    ttft_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    total_s: float = 0.0

    @property
    def decode_tokens(self) -> int:
        """Tokens committed by decoding rounds (the first token comes from the prefill). A final
        EOS counts: a pass chose it, though the output drops it."""
        return max(self.generated_tokens + self.eos_committed - 1, 0)

    @property
    def tokens_per_jump(self) -> float:
        """TPJ: tokens committed per target pass while decoding; target-only scores 1.0."""
        return self.decode_tokens / self.target_passes if self.target_passes else 1.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def per_token_acceptance(self) -> float:
        """a in the cost model: accepted / (accepted + rejections), the geometric-model MLE."""
        trials = self.accepted + self.rejections
        return self.accepted / trials if trials else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.total_s if self.total_s > 0 else 0.0

    @property
    def other_s(self) -> float:
        return max(self.total_s - self.prefill_s - self.draft_s - self.verify_s, 0.0)

    def record_round(self, source: str, proposed: int, accepted: int, forced: int = 0) -> None:
        self.forced_proposed += forced
        self.forced_accepted += min(forced, accepted)
        self.rounds += 1
        self.target_passes += 1
        self.proposed += proposed
        self.accepted += accepted
        self.rejections += accepted < proposed
        if proposed:
            self.proposals_by[source] = self.proposals_by.get(source, 0) + 1
        if accepted > len(self.accepted_per_position):
            self.accepted_per_position += [0] * (accepted - len(self.accepted_per_position))
        for i in range(accepted):
            self.accepted_per_position[i] += 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(tokens_per_jump=self.tokens_per_jump, acceptance_rate=self.acceptance_rate,
                 tokens_per_second=self.tokens_per_second, other_s=self.other_s)
        return d
