"""Logits -> probabilities (temperature, top-k, top-p) and draws from them."""
from __future__ import annotations

import numpy as np

from .sampling_params import SamplingParams


def probs_from_logits(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """logits [n, V] -> probabilities [n, V] (float64) after temperature, top-k and top-p."""
    x = logits.astype(np.float64) / max(params.temperature, 1e-6)
    if 0 < params.top_k < x.shape[-1]:
        kth = np.partition(x, -params.top_k, axis=-1)[:, -params.top_k, None]
        x = np.where(x < kth, -np.inf, x)
    x = np.exp(x - x.max(axis=-1, keepdims=True))
    p = x / x.sum(axis=-1, keepdims=True)
    if params.top_p < 1.0:
        order = np.argsort(-p, axis=-1)
        sorted_p = np.take_along_axis(p, order, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        drop_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p >= params.top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        p = np.where(drop, 0.0, p)
        p /= p.sum(axis=-1, keepdims=True)
    return p


def sample(p: np.ndarray, rng: np.random.Generator) -> int:
    """One draw from a probability vector [V] (inverse CDF; robust to rounding)."""
    cdf = np.cumsum(p)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(p) - 1))


class Sampler:
    """The per-request random state and logits processing, shared by engine and draft."""

    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def probs(self, logits: np.ndarray) -> np.ndarray:
        return probs_from_logits(logits, self.params)

    def draw(self, p: np.ndarray) -> int:
        return sample(p, self.rng)
