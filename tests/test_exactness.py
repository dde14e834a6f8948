"""Speculative greedy output equals target-only greedy output, token for token, for every
speculator on 30+ prompts of the repo's prompt sets; any difference must be a near-tie."""
import pytest

from specops.engine.sampling_params import SamplingParams

from conftest import NEAR_TIE, first_divergence, load_prompts, prompt_ids, top2_gap

PROMPTS = (load_prompts("free") + load_prompts("copy"))[:36]
NEW_TOKENS = 48


@pytest.fixture(scope="module")
def baseline(engine):
    out = {}
    for i, item in enumerate(PROMPTS):
        ids = prompt_ids(item, engine.tokenizer)
        out[i] = (ids, engine.generate(ids, SamplingParams(max_new_tokens=NEW_TOKENS, speculator="none")))
    return out


# Fixed k for the single speculators (every round verifies all it can propose, the hardest
# case for exactness); auto and one adaptive draft run choose k per round.
@pytest.mark.parametrize("speculator,k,adaptive", [("ngram", 4, False), ("draft", 4, False), ("hybrid", 6, False),
                                                   ("auto", 8, True), ("draft", 4, True)])
def test_speculative_greedy_equals_target_only(engine, target_folder, baseline, speculator, k, adaptive):
    near_ties, passes, tokens = [], 0, 0
    for i, (ids, base) in baseline.items():
        res = engine.generate(ids, SamplingParams(max_new_tokens=NEW_TOKENS, speculator=speculator, k_draft=k,
                                                  adaptive_k=adaptive))
        passes += res.stats.target_passes
        tokens += res.stats.decode_tokens
        j = first_divergence(res.token_ids, base.token_ids)
        if j is None:
            assert res.text == base.text and res.finish_reason == base.finish_reason
            continue
        gap, top = top2_gap(target_folder, ids + base.token_ids[:j])
        assert gap < NEAR_TIE and {res.token_ids[j], base.token_ids[j]} <= set(top), (
            f"{speculator}: prompt {i} diverged at token {j} (gap {gap:.2e}, top-2 {top})")
        near_ties.append(i)
    # Each divergence above is proved a near-tie; this cap only guards against near-ties becoming
    # the rule. With adaptive k, which pass lengths verify which tokens depends on timing, so the
    # count varies between runs: at most 3 of 36 in two runs of this file, 4 once in a full run
    # (auto, k <= 8).
    assert len(near_ties) <= len(baseline) // 5, f"too many near-ties: {near_ties}"
    if not adaptive:  # adaptive k may rightly choose plain decoding
        assert tokens / passes > 1.0  # proposals were made and accepted


def test_target_only_scores_one_jump_per_pass(baseline):
    for ids, res in baseline.values():
        assert res.stats.tokens_per_jump == 1.0 and res.stats.proposed == 0
