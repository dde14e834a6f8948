"""Acceptance rules: which proposed tokens the target keeps, and the token it adds.

Both return (accepted count j, the next token). Committed this round: proposals[:j] + [next].
"""
from __future__ import annotations

import numpy as np

from .sampling import sample


def accept_greedy(proposals: np.ndarray, target_argmax: np.ndarray) -> tuple[int, int]:
    """proposals [k]; target_argmax [k + 1] (argmax after the pending token and each proposal).
    Keep the longest prefix equal to the target's own choices, then the target's next token."""
    k = len(proposals)
    mismatch = np.flatnonzero(proposals != target_argmax[:k])
    j = int(mismatch[0]) if len(mismatch) else k
    return j, int(target_argmax[j])


def accept_sampled(proposals: np.ndarray, p: np.ndarray, q: np.ndarray | None,
                   rng: np.random.Generator, cut_q: np.ndarray | None = None) -> tuple[int, int]:
    """Speculative sampling (Leviathan et al. 2023; Chen et al. 2023).

    proposals [k]; p [k + 1, V] target probabilities; q [k, V] draft probabilities, or None
    for a deterministic proposer (n-gram: q is one-hot). Token i is kept with probability
    min(1, p/q); on rejection the next token comes from norm(max(0, p - q)); after k
    acceptances the bonus comes from p[k]. The committed tokens are distributed as p.
    cut_q [V]: the draft's distribution of a token drafted at position k and cut (a grammar
    forbids it, p = 0 there): a certain rejection, so the bonus comes from norm(max(0, p[k] - cut_q)).
    """
    for i, tok in enumerate(proposals):
        qi = q[i, tok] if q is not None else 1.0
        if rng.random() * qi < p[i, tok]:  # q <= p: always accept
            continue
        residual = np.maximum(p[i] - q[i], 0.0) if q is not None else p[i].copy()
        if q is None:
            residual[tok] = 0.0
        total = residual.sum()
        return i, sample(residual / total if total > 0 else p[i], rng)
    k = len(proposals)
    if cut_q is not None:
        residual = np.maximum(p[k] - cut_q, 0.0)
        total = residual.sum()
        return k, sample(residual / total if total > 0 else p[k], rng)
    return k, sample(p[k], rng)
