"""Log-probabilities of committed tokens, from the target's logits of the pass that chose them.

Taken from the raw logits (before temperature, top-k/top-p and any grammar mask), as OpenAI
reports them: the model's own distribution. A speculative round's verify pass computes the
same rows a plain step would, so the figures do not depend on the speculator.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_TOP_LOGPROBS = 20  # as the OpenAI API


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # the `n_top` likeliest tokens, likeliest first


def token_logprobs(logits: np.ndarray, tokens: list[int], n_top: int) -> list[TokenLogprob]:
    """logits [n, V] (row i chose tokens[i]) -> one TokenLogprob per token."""
    x = logits[:len(tokens)].astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    logp = x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))  # log-softmax [n, V]
    out = []
    for row, tok in zip(logp, tokens):
        top: tuple[tuple[int, float], ...] = ()
        if n_top:
            ids = np.argpartition(-row, n_top - 1)[:n_top]
            ids = ids[np.argsort(-row[ids], kind="stable")]
            top = tuple((int(i), float(row[i])) for i in ids)
        out.append(TokenLogprob(int(tok), float(row[tok]), top))
    return out
