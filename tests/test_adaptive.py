"""The adaptive-k cost model: it proposes where proposals pay and steps plainly where not."""
import numpy as np
import pytest

from specops.engine.adaptive import EXPLORE_EVERY, CostModel, expected_tokens
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


def test_classes_are_tracked_apart_and_a_declined_one_is_retried():
    cost = CostModel(verify_s=list(VERIFY), draft_s=0.1)
    for _ in range(50):
        cost.observe_round("ngram4", 4, 4)
        cost.observe_round("ngram1", 4, 0)
    assert cost.estimate("ngram4") > 0.9 > 0.1 > cost.estimate("ngram1")
    assert cost.best_k("ngram1", 4)[0] == 0
    for _ in range(EXPLORE_EVERY - 1):
        cost.chose("", ["ngram1", "draft"])
    assert not cost.due("ngram1")
    cost.chose("", ["ngram1", "draft"])
    assert cost.due("ngram1") and cost.due("draft")
    cost.chose("ngram1", ["ngram1", "draft"])
    assert not cost.due("ngram1") and cost.due("draft")


def test_ngram_proposals_carry_the_matched_suffix_length():
    spec = NgramSpeculator(min_n=1, max_n=4)
    ctx = np.array([5, 6, 7, 8, 9, 1, 2, 5, 6, 7, 8], dtype=np.int64)
    long = spec.propose(ctx, 3)
    assert long.ids.tolist() == [9, 1, 2] and long.match == 4 and long.key == "ngram4"
    short = spec.propose(np.array([1, 2, 3, 4, 2], dtype=np.int64), 2)
    assert short.ids.tolist() == [3, 4] and short.key == "ngram1"
    assert Proposal.empty("draft").key == "draft"


def test_a_draft_judged_on_a_slow_stretch_is_retried():
    """Draft rounds that once ran slowly (a busy machine) must not lock the draft out: rounds
    without it let its cost estimates relax back until it is chosen again."""
    cost = CostModel(verify_s=list(VERIFY), draft_s=0.1, verify_after_draft_s=list(VERIFY))
    cost.observe_round("draft", 4, 3)
    assert cost.best_k("draft", 4)[0] > 0
    for _ in range(200):
        cost.observe_verify(3, 10.0, after_draft=True)  # ten times the usual cost
        cost.observe_draft(2, 2.0)
    assert cost.best_k("draft", 4)[0] == 0
    rounds = 0
    while cost.best_k("draft", 4)[0] == 0:
        cost.chose("", ["draft"])
        rounds += 1
        assert rounds < 1000, "the draft is never retried"


def test_the_engine_explores_a_draft_its_prior_rules_out(engine):
    """From the prior (a = 0.5) a draft round looks too dear when a verify pass is dear, so the
    draft would never be tried and its acceptance never learnt; exploration tries it."""
    from specops.engine.llm_engine import Engine
    from specops.engine.sampling_params import SamplingParams

    steep = [1.0, 1.6, 2.2, 2.8, 3.4]
    cost = CostModel(verify_s=list(steep), draft_s=0.3, verify_after_draft_s=list(steep))
    assert cost.best_k("draft", 4)[0] == 0
    fresh = Engine(engine.target, engine.tokenizer, engine.draft, cost_model=cost)
    res = fresh.generate(engine.tokenizer.encode("def read_config(path):\n"),
                         SamplingParams(max_new_tokens=64, speculator="draft"))
    assert res.stats.draft_passes > 0 and "draft" in cost.acceptance
