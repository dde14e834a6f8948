"""Speculative sampling through the engine keeps the target's distribution.

Default pair (target vocabulary 32064, draft 32000), top-k 3 at temperature 1: the joint
distribution of the first three generated tokens under each speculator is compared with
target-only sampling by a chi-square test of homogeneity at significance 1e-3, with fixed
seeds (so the outcome is deterministic). The first token comes from the prefill; the next
two from one speculative round (k_draft 2), through the vocabulary bridge for the draft."""
from collections import Counter

import pytest
from scipy.stats import chi2_contingency

from specops.engine.sampling_params import SamplingParams

ALPHA = 1e-3
N = 800
PROMPT = "def read_config(path):\n"


def sequences(engine, speculator: str, seed0: int) -> Counter:
    ids = engine.tokenizer.encode(PROMPT)
    out = Counter()
    for i in range(N):
        params = SamplingParams(max_new_tokens=3, temperature=1.0, top_k=3, seed=seed0 + i,
                                speculator=speculator, k_draft=2, adaptive_k=False)
        out[tuple(engine.generate(ids, params).token_ids)] += 1
    return out


def homogeneity_pvalue(a: Counter, b: Counter) -> float:
    cells = sorted(set(a) | set(b), key=lambda c: -(a[c] + b[c]))
    common = [c for c in cells if a[c] + b[c] >= 10]
    rest = [c for c in cells if c not in common]
    table = [[a[c] for c in common] + [sum(a[c] for c in rest)],
             [b[c] for c in common] + [sum(b[c] for c in rest)]]
    table = [row for row in zip(*table) if sum(row) > 0]
    return chi2_contingency(list(zip(*table))).pvalue


@pytest.fixture(scope="module")
def reference(engine):
    return sequences(engine, "none", 0)


@pytest.mark.parametrize("speculator", ["draft", "ngram", "hybrid"])
def test_speculative_sampling_matches_target_sampling(engine, reference, speculator):
    got = sequences(engine, speculator, 10_000)
    assert len(reference) > 3  # the test has something to compare
    assert homogeneity_pvalue(reference, got) > ALPHA


def test_the_check_detects_a_different_distribution(engine, reference):
    """Greedy-ish sampling (top-k 1 after the first token) must be told apart."""
    ids = engine.tokenizer.encode(PROMPT)
    skewed = Counter()
    for i in range(N):
        p = SamplingParams(max_new_tokens=3, temperature=1.0, top_k=2, seed=20_000 + i, speculator="none")
        skewed[tuple(engine.generate(ids, p).token_ids)] += 1
    assert homogeneity_pvalue(reference, skewed) < ALPHA


def test_sampling_with_confidence_cut_draft_proposals_matches_target_sampling(engine, reference):
    """Adaptive k with the draft: the DraftStopper ends each proposal where the draft's top
    probability makes one more token not worth its verify cost. The cut depends on the draft's
    distribution only (never on the token drawn from it), so the output distribution must stay
    the target's. A cost model where a verify pass grows steeply with its length and the draft
    is free makes the cut fall at different places (checked below)."""
    from specops.engine.adaptive import CostModel
    from specops.engine.llm_engine import Engine

    cost = CostModel(verify_s=[1.0, 1.3, 1.7], draft_s=1e-3, verify_after_draft_s=[1.0, 1.3, 1.7])
    cost.observe_round("draft", 2, 2)
    adaptive = Engine(engine.target, engine.tokenizer, engine.draft, cost_model=cost)
    ids = engine.tokenizer.encode(PROMPT)
    got, lengths = Counter(), Counter()
    for i in range(N):
        params = SamplingParams(max_new_tokens=3, temperature=1.0, top_k=3, seed=30_000 + i,
                                speculator="draft", k_draft=2)
        res = adaptive.generate(ids, params)
        got[tuple(res.token_ids)] += 1
        lengths[res.stats.proposed] += 1
    assert len(lengths) > 1, lengths  # proposals of different lengths were made
    assert homogeneity_pvalue(reference, got) > ALPHA
