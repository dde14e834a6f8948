"""Acceptance rules on literal arrays, and the sampling rule's output distribution."""
import numpy as np
from hypothesis import given, settings, strategies as st
from scipy.stats import chisquare

from specops.engine.verify import accept_greedy, accept_sampled

ALPHA = 1e-3  # significance of the distribution tests (fixed seeds: deterministic outcome)


def test_greedy_accepts_the_matching_prefix_then_the_target_token():
    # target argmax after pending, d1, d2, d3 = [5, 6, 9, 4]; proposals [5, 6, 7]
    assert accept_greedy(np.array([5, 6, 7]), np.array([5, 6, 9, 4])) == (2, 9)


def test_greedy_full_acceptance_takes_the_bonus():
    assert accept_greedy(np.array([5, 6]), np.array([5, 6, 8])) == (2, 8)


def test_greedy_no_proposals_is_plain_decoding():
    assert accept_greedy(np.zeros(0, np.int64), np.array([3])) == (0, 3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=0, max_size=6), st.data())
def test_greedy_commits_exactly_the_target_choices(proposals, data):
    argmax = np.array(data.draw(st.lists(st.integers(0, 3), min_size=len(proposals) + 1,
                                         max_size=len(proposals) + 1)))
    j, nxt = accept_greedy(np.array(proposals, dtype=np.int64), argmax)
    committed = proposals[:j] + [nxt]
    assert committed == argmax[:j + 1].tolist()  # what target-only greedy would have produced
    assert j == len(proposals) or proposals[j] != argmax[j]


def _dist(rng, v, zero_from=None):
    p = rng.random(v) ** 2
    if zero_from is not None:
        p[zero_from:] = 0.0
    return p / p.sum()


def _first_token_counts(p, q, n, seed, k=1):
    rng = np.random.default_rng(seed)
    v = p.shape[-1]
    counts = np.zeros(v)
    for _ in range(n):
        if q is None:  # deterministic proposer (n-gram): always proposes token 0
            proposals = np.zeros(k, dtype=np.int64)
        else:
            proposals = np.array([rng.choice(v, p=q[i]) for i in range(k)])
        j, nxt = accept_sampled(proposals, p, q, rng)
        first = proposals[0] if j > 0 else nxt
        counts[first] += 1
    return counts


def test_sampled_rule_keeps_the_target_distribution():
    rng = np.random.default_rng(0)
    p = np.stack([_dist(rng, 6) for _ in range(3)])
    q = np.stack([_dist(rng, 6) for _ in range(2)])
    counts = _first_token_counts(p, q, 20000, seed=1, k=2)
    assert chisquare(counts, p[0] * counts.sum()).pvalue > ALPHA


def test_sampled_rule_with_a_smaller_draft_vocabulary():
    # the draft cannot produce ids >= 4 (a target-only id, like Phi-3's chat tags): q = 0 there
    rng = np.random.default_rng(2)
    p = np.stack([_dist(rng, 7) for _ in range(2)])
    q = np.stack([_dist(rng, 7, zero_from=4)])
    counts = _first_token_counts(p, q, 20000, seed=3)
    assert chisquare(counts, p[0] * counts.sum()).pvalue > ALPHA
    assert counts[4:].sum() > 0  # the target still produces them, through the residual


def test_sampled_rule_with_a_deterministic_proposer():
    rng = np.random.default_rng(4)
    p = np.stack([_dist(rng, 5) for _ in range(2)])
    counts = _first_token_counts(p, None, 20000, seed=5)
    assert chisquare(counts, p[0] * counts.sum()).pvalue > ALPHA


def test_a_broken_rule_is_detected():
    """The test above can fail: accepting every proposal gives q's distribution, not p's."""
    rng = np.random.default_rng(0)
    p, q = _dist(rng, 6), _dist(rng, 6)
    draws = np.random.default_rng(1).choice(6, size=20000, p=q)
    counts = np.bincount(draws, minlength=6)
    assert chisquare(counts, p * counts.sum()).pvalue < ALPHA
