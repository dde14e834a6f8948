"""Prompt lookup (Saxena 2023): propose what followed the latest earlier match of the suffix.

The index is updated as tokens are committed (O(max_n) per token), so a proposal costs
O(max_n) dict look-ups however long the context is.
"""
from __future__ import annotations

import numpy as np

from .base import Proposal


class NgramIndex:
    """For each n in [min_n, max_n]: n-gram -> end position of its latest occurrence that has
    at least one token after it."""

    def __init__(self, min_n: int = 1, max_n: int = 4):
        if not 1 <= min_n <= max_n:
            raise ValueError("need 1 <= min_n <= max_n")
        self.min_n, self.max_n = min_n, max_n
        self.tokens: list[int] = []
        self._last: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_n + 1)]

    def extend(self, ids) -> None:
        for tok in ids:
            end = len(self.tokens)  # n-grams ending here now have a follower: index them
            for n in range(self.min_n, min(self.max_n, end) + 1):
                self._last[n][tuple(self.tokens[end - n:end])] = end
            self.tokens.append(int(tok))

    def lookup(self, k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the longest suffix."""
        return self.match(k)[0]

    def match(self, k: int) -> tuple[list[int], int]:
        """(lookup(k), n): the proposal and the length of the suffix it matched (0: none)."""
        if k <= 0:
            return [], 0
        L = len(self.tokens)
        for n in range(min(self.max_n, L), self.min_n - 1, -1):
            end = self._last[n].get(tuple(self.tokens[L - n:]))
            if end is not None:
                return self.tokens[end:end + k], n
        return [], 0


def brute_force_lookup(tokens: list[int], k: int, min_n: int, max_n: int) -> list[int]:
    """Reference for the index (used by tests): scan the whole context."""
    L = len(tokens)
    for n in range(min(max_n, L), min_n - 1, -1):
        suffix = tokens[L - n:]
        for end in range(L - 1, n - 1, -1):
            if tokens[end - n:end] == suffix:
                return tokens[end:end + k]
    return []


class NgramSpeculator:
    name = "ngram"

    def __init__(self, min_n: int = 1, max_n: int = 4):
        self.min_n, self.max_n = min_n, max_n
        self.reset()

    def reset(self) -> None:
        self.index = NgramIndex(self.min_n, self.max_n)

    def propose(self, context: np.ndarray, k: int, sampler=None) -> Proposal:
        known = len(self.index.tokens)
        if known > len(context) or (known and self.index.tokens[-1] != int(context[known - 1])):
            self.reset()  # a different context: start over
            known = 0
        self.index.extend(context[known:].tolist())
        ids, n = self.index.match(k)
        return Proposal(np.asarray(ids, dtype=np.int64), None, self.name, match=n)
