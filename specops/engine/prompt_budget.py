"""How many prompt tokens ride in a ragged pass beside other sequences' decoding rows.

A joining prompt is read in chunks that share passes with the running sequences (chunked
prefill): a long chunk stalls every running stream for its whole pass, a short one makes the
prompt pay a pass's fixed cost (every weight read) per few tokens. Alone, a prompt runs `chunk`
tokens a pass, at full speed. Beside decoding rows it gets as many tokens as keep the pass within
`stall` times a decoding-only pass, but never fewer than `floor` (a chunk of a few tokens pays a
pass's fixed cost for little: at 3500 positions a 16-token chunk costs 1.4x a 512-token chunk's CPU
time per token, a 32-token chunk 1.1x), from a model of what passes cost, learnt as they run:

    pass seconds = decode(rows) + alpha * prompt tokens + beta * sum of their positions

decode(rows): the latest decoding-only passes (an average per row count); alpha: a prompt token's
own cost (its matmuls); beta: its attention's, per position it attends to (a token at position
7000 attends to 7000 keys in every layer). alpha and beta: least squares over recent passes that
carried prompt tokens, from priors until there are enough.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .adaptive import Ema


@dataclass
class PromptBudget:
    chunk: int = 512          # prompt tokens a pass when nothing else decodes (Settings.prefill_chunk)
    stall: float = 2.5        # a shared pass may cost up to this many decoding-only passes
    floor: int = 32           # never fewer prompt tokens a pass (Settings.prefill_min_chunk): the prompt's
                              # own rate, not only the streams', counts
    alpha: float = 2e-4       # prior: seconds per prompt token (replaced by measurements)
    beta: float = 1e-7        # prior: seconds per prompt token and attended position
    decode: dict[int, Ema] = field(default_factory=dict)  # decoding rows -> seconds of such a pass
    _seen: list[tuple[float, float, float]] = field(default_factory=list)  # (tokens, positions, excess s)

    def tokens(self, rows: int, start: int, remaining: int) -> int:
        """Prompt tokens for a pass beside `rows` decoding rows, the prompt's next token at
        position `start`, `remaining` tokens of it left."""
        if rows == 0:
            return min(self.chunk, remaining)
        allowed = (self.stall - 1.0) * self.decode_s(rows)
        m = self.chunk
        while m > self.floor and self.alpha * m + self.beta * (m * start + m * (m - 1) / 2) > allowed:
            m = max(self.floor, m * 3 // 4)
        return min(m, remaining)

    def seed(self, verify_s: list[float]) -> None:
        """Start from the pass curve timed at load (verify_s[n - 1]: a pass over n rows): the
        decoding passes' costs, and a prompt token's as the curve's slope."""
        if len(verify_s) < 2:
            return
        for n, seconds in enumerate(verify_s, 1):
            self.decode[n] = Ema(seconds, 0.2)
        self.alpha = max((verify_s[-1] - verify_s[0]) / (len(verify_s) - 1), 1e-6)

    def decode_s(self, rows: int) -> float:
        """Seconds of a decoding-only pass over `rows` rows: measured, or the nearest measured."""
        if rows in self.decode:
            return self.decode[rows].value
        if not self.decode:
            return self.alpha * max(rows, 1) * 20  # before any pass: a guess of the right order
        nearest = min(self.decode, key=lambda r: abs(r - rows))
        return self.decode[nearest].value * max(rows, 1) / nearest if nearest < rows else self.decode[nearest].value

    def observe(self, rows: int, tokens: int, positions: int, seconds: float) -> None:
        """A pass of `rows` decoding rows and `tokens` prompt tokens attending `positions` in all."""
        if tokens == 0:
            if rows:
                self.decode.setdefault(rows, Ema(seconds, 0.2)).update(seconds)
            return
        excess = seconds - (self.decode_s(rows) if rows else 0.0)
        self._seen = [*self._seen[-31:], (float(tokens), float(positions), excess)]
        if len(self._seen) >= 4:
            x = np.array([(m, p) for m, p, _ in self._seen])
            y = np.array([e for _, _, e in self._seen])
            (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
            if a > 0:
                self.alpha = float(a)
            if b > 0:
                self.beta = float(b)
