"""Guesses for rows a pass computes anyway.

Where one-token steps run two rows wide (consistent passes) and where a batch pads short rows to
the round's width, the padding rows cost the same whatever they hold. Filled with a guess
instead of a repeat of the last token, each is a free proposal: accepted, it commits a token
for nothing; rejected, it costs nothing (verification keeps the output the target's own).

The guess: the token that most recently followed the same token in what the target committed,
in this request or an earlier one (a table of one entry per token id, so bounded by the
vocabulary). It only shapes speed, never output.
"""
from __future__ import annotations


class SuccessorTable:
    def __init__(self):
        self._next: dict[int, int] = {}

    def observe(self, previous: int, ids) -> None:
        """Committed tokens `ids`, following `previous`."""
        for tok in ids:
            tok = int(tok)
            self._next[previous] = tok
            previous = tok

    def chain(self, last: int, n: int) -> list[int]:
        """Up to n guesses after `last`, each the successor of the one before."""
        out: list[int] = []
        while len(out) < n and (nxt := self._next.get(last)) is not None:
            out.append(nxt)
            last = nxt
        return out
