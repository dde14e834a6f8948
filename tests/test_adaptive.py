"""The adaptive-k cost model: it proposes where proposals pay and steps plainly where not."""
import numpy as np
import pytest

from specops.engine.adaptive import PRIOR, CostModel, expected_tokens
from specops.speculators.base import Proposal
from specops.speculators.ngram import NgramSpeculator

# a target whose 5-token pass costs twice a 1-token pass (as the embedded int4 target does)
VERIFY = [1.0, 1.1, 1.3, 1.6, 2.0]


def model_with(key: str, acceptance: float, draft_s: float = 0.02) -> CostModel:
    cost = CostModel(verify_s=list(VERIFY), draft_s=draft_s)
    cost.observe_round(key, 1, 1)
    cost.acceptance[key].value = acceptance
    return cost


def test_expected_tokens_is_leviathans_formula():
    assert expected_tokens(0.0, 4) == 1.0
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)


@pytest.mark.parametrize("key", ["draft", "ngram4"])
def test_low_acceptance_means_a_plain_step(key):
    assert model_with(key, 0.05).best_k(key, 4)[0] == 0


@pytest.mark.parametrize("key", ["draft", "ngram4"])
def test_high_acceptance_proposes_more(key):
    ks = [model_with(key, a).best_k(key, 4)[0] for a in (0.3, 0.6, 0.9, 0.99)]
    assert ks == sorted(ks) and ks[0] < ks[-1]


def test_draft_cost_shortens_proposals():
    cheap = model_with("draft", 0.8, draft_s=0.01).best_k("draft", 4)[0]
    dear = model_with("draft", 0.8, draft_s=0.5).best_k("draft", 4)[0]
    assert dear < cheap


def test_classes_are_tracked_apart_and_unused_ones_drift_back():
    cost = CostModel(verify_s=list(VERIFY), draft_s=0.1)
    for _ in range(50):
        cost.observe_round("ngram4", 4, 4)
        cost.observe_round("ngram1", 4, 0)
    assert cost.acceptance["ngram4"].value > 0.9 > 0.1 > cost.acceptance["ngram1"].value
    low = cost.acceptance["ngram1"].value
    for _ in range(100):
        cost.drift()
    assert low < cost.acceptance["ngram1"].value < PRIOR


def test_ngram_proposals_carry_the_matched_suffix_length():
    spec = NgramSpeculator(min_n=1, max_n=4)
    ctx = np.array([5, 6, 7, 8, 9, 1, 2, 5, 6, 7, 8], dtype=np.int64)
    long = spec.propose(ctx, 3)
    assert long.ids.tolist() == [9, 1, 2] and long.match == 4 and long.key == "ngram4"
    short = spec.propose(np.array([1, 2, 3, 4, 2], dtype=np.int64), 2)
    assert short.ids.tolist() == [3, 4] and short.key == "ngram1"
    assert Proposal.empty("draft").key == "draft"


def test_a_draft_judged_on_a_slow_stretch_is_retried():
    """Draft rounds that once ran slowly (a busy machine) must not lock the draft out: declined
    rounds observe nothing, so its cost estimates relax back until it is chosen again."""
    cost = CostModel(verify_s=list(VERIFY), draft_s=0.1, verify_after_draft_s=list(VERIFY))
    cost.observe_round("draft", 4, 3)
    assert cost.best_k("draft", 4)[0] > 0
    for _ in range(200):
        cost.observe_verify(3, 10.0, after_draft=True)  # ten times the usual cost
        cost.observe_draft(2, 2.0)
    assert cost.best_k("draft", 4)[0] == 0
    rounds = 0
    while cost.best_k("draft", 4)[0] == 0:
        cost.drift()
        rounds += 1
        assert rounds < 1000, "the draft is never retried"
