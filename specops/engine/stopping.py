"""When a generation ends: EOS ids, stop strings, the token budget, the context cap."""
from __future__ import annotations

from dataclasses import dataclass

from .sampling_params import SamplingParams


@dataclass
class StopCheck:
    eos_ids: frozenset[int]
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # an EOS id is an ordinary token: kept, and generation goes on

    @classmethod
    def for_request(cls, eos_ids: frozenset[int], params: SamplingParams) -> StopCheck:
        """The stopping rules of one request on a model whose end-of-sequence ids are `eos_ids`
        (both engines build theirs here, so they cannot disagree on when a generation ends)."""
        return cls(eos_ids, params.max_new_tokens, tuple(params.stop), params.ignore_eos)

    def cut_tokens(self, generated: int, new: list[int]) -> tuple[list[int], str | None]:
        """Trim a round's tokens at an EOS id (dropped; kept with ignore_eos) or at the budget;
        returns the reason."""
        for i, tok in enumerate(new):
            if tok in self.eos_ids and not self.ignore_eos:
                return new[:i], "stop"
            if generated + i + 1 >= self.max_new_tokens:
                return new[:i + 1], "length"
        return new, None

    def cut_text(self, text: str) -> tuple[str, bool]:
        """Text before the first stop string, and whether one was found."""
        cuts = [i for i in (text.find(s) for s in self.stop if s) if i >= 0]
        return (text[:min(cuts)], True) if cuts else (text, False)

    def safe_prefix(self, text: str) -> str:
        """The part of `text` no later token can turn into a stop string (for streaming)."""
        hold = max((len(s) - 1 for s in self.stop if s), default=0)
        for n in range(min(hold, len(text)), 0, -1):
            if any(s.startswith(text[-n:]) for s in self.stop if s):
                return text[:-n]
        return text
