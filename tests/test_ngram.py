"""The n-gram index on literal arrays, and against a brute-force scan (hypothesis)."""
import numpy as np
from hypothesis import given, settings, strategies as st

from specops.speculators.ngram import NgramIndex, NgramSpeculator, brute_force_lookup


def index_of(tokens, min_n=1, max_n=3):
    idx = NgramIndex(min_n, max_n)
    idx.extend(tokens)
    return idx


def test_proposes_what_followed_the_latest_match():
    # suffix [1, 2] occurred at 0 (followed by 3) and at 4 (followed by 9): latest wins
    assert index_of([1, 2, 3, 4, 1, 2, 9, 7, 1, 2]).lookup(3) == [9, 7, 1]


def test_longest_suffix_wins_over_a_later_shorter_match():
    # [5, 1, 2] matches at 0..3 (followed by 8); [1, 2] alone matches later (followed by 6)
    assert index_of([5, 1, 2, 8, 1, 2, 6, 5, 1, 2]).lookup(2) == [8, 1]


def test_no_match_and_k_zero():
    assert index_of([1, 2, 3, 4]).lookup(3) == []
    assert index_of([1, 2, 1, 2]).lookup(0) == []


def test_min_n_excludes_short_matches():
    assert index_of([7, 3, 9, 3], min_n=2).lookup(2) == []
    assert index_of([7, 3, 9, 3], min_n=1).lookup(2) == [9, 3]


def test_speculator_follows_a_growing_context_and_resets_on_a_new_one():
    spec = NgramSpeculator(1, 3)
    assert spec.propose(np.array([1, 2, 3, 1, 2]), 2).ids.tolist() == [3, 1]
    assert spec.propose(np.array([1, 2, 3, 1, 2, 3, 1]), 2).ids.tolist() == [2, 3]
    assert spec.propose(np.array([9, 8, 9]), 2).ids.tolist() == [8, 9]  # different context


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=0, max_size=60), st.integers(0, 6),
       st.integers(1, 3), st.integers(0, 3))
def test_index_equals_brute_force(tokens, k, min_n, extra):
    max_n = min_n + extra
    idx = NgramIndex(min_n, max_n)
    # commit in uneven chunks, as rounds do, checking after each
    for start in range(0, len(tokens), 7):
        idx.extend(tokens[start:start + 7])
        seen = tokens[:start + 7]
        assert idx.lookup(k) == brute_force_lookup(seen, k, min_n, max_n)
