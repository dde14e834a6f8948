"""Continuous batching: sequences that share target passes give what each gives alone.

Runs on the committed small pair (Phi-3-format int4 target, TinyLlama-format draft); the real
model's batch is checked in tests/test_real_model.py."""
from collections import Counter

import numpy as np
import pytest

from specops.engine.batch import BatchEngine, Sequence
from specops.engine.sampling_params import SamplingParams
from specops.loader import load_batch_engine
from specops.runtime.batch_decoder import BatchDecoder, SlotDecoder
from specops.runtime.decoder import Decoder
from specops.runtime.model_folder import read_model_folder

from conftest import load_prompts, prompt_ids
from test_sampling_engine import ALPHA, N, PROMPT, homogeneity_pvalue

PROMPTS = (load_prompts("copy")[:4] + load_prompts("free")[:4])


@pytest.fixture(scope="module")
def batch_engine(settings):
    return load_batch_engine(settings.model_copy(update={"max_batch": 4}))


@pytest.mark.parametrize("min_rows", [1, 2])
def test_batched_rows_equal_each_sequence_alone(target_folder, min_rows):
    spec = read_model_folder(target_folder, verify=False)
    batch, alone = BatchDecoder(spec, max_batch=3, capacity=256), Decoder(spec, capacity=256)
    batch.min_rows = alone.min_rows = min_rows
    rng = np.random.default_rng(0)
    prompts = [rng.integers(10, 30000, size=n).tolist() for n in (40, 17, 63)]
    for slot, p in enumerate(prompts):
        batch.prefill(slot, p)
    rows = [[5, 6], [7], [8, 9, 10]]  # different lengths in one pass: padded to three
    got = batch.forward(rows)
    for slot, p in enumerate(prompts):
        alone.reset()
        alone.prefill(p)
        want = alone.append(rows[slot])
        if min_rows == 2:  # every row at least two wide: the same arithmetic as alone
            assert np.array_equal(got[slot], want)
        else:
            np.testing.assert_allclose(got[slot], want, atol=1e-4)
        assert batch.lengths[slot] == len(p) + len(rows[slot])


def test_moving_a_slot_keeps_its_cache(target_folder):
    spec = read_model_folder(target_folder, verify=False)
    batch = BatchDecoder(spec, max_batch=2, capacity=128)
    batch.min_rows = 2
    batch.prefill(1, list(range(10, 40)))
    before = batch.forward([[1], [5, 6]])[1].copy()
    batch.rewind(1, 30)
    batch.move(1, 0)
    assert list(batch.lengths) == [30, 0]
    assert np.array_equal(SlotDecoder(batch, 0).append([5, 6]), before)


@pytest.mark.parametrize("speculator,k", [("none", 0), ("ngram", 6), ("draft", 3), ("auto", 6)])
def test_greedy_in_a_batch_equals_greedy_alone(engine, batch_engine, speculator, k):
    """Sequences of different lengths join mid-way (rounds 0, 0, 3, 7, 9, ...) and leave as they
    finish; each one's ids equal target-only decoding of the same prompt alone."""
    params = [SamplingParams(max_new_tokens=24 + 8 * (i % 3), speculator=speculator, k_draft=k,
                             adaptive_k=speculator == "auto") for i in range(len(PROMPTS))]
    ids = [prompt_ids(item, engine.tokenizer) for item in PROMPTS]
    seqs = [Sequence(i, p) for i, p in zip(ids, params)]
    results = batch_engine.generate_all(seqs, join_at=[0, 0, 3, 7, 9, 9, 14, 20])
    for i, (res, p) in enumerate(zip(results, params)):
        base = engine.generate(ids[i], SamplingParams(max_new_tokens=p.max_new_tokens, speculator="none"))
        assert res.token_ids == base.token_ids, f"prompt {i} ({speculator})"
        assert res.finish_reason == base.finish_reason and res.text == base.text
    if speculator in ("ngram", "draft"):
        assert sum(r.stats.accepted for r in results) > 0  # proposals were verified in batches
    assert not batch_engine.active and batch_engine.free == 4


def test_a_cancelled_sequence_frees_its_slot_and_the_others_are_unchanged(engine, batch_engine):
    ids = [prompt_ids(item, engine.tokenizer) for item in PROMPTS[:4]]
    params = SamplingParams(max_new_tokens=40, speculator="ngram", k_draft=4)
    alone = [engine.generate(i, SamplingParams(max_new_tokens=40, speculator="none")).token_ids for i in ids]
    rounds = {"n": 0}
    seqs = [Sequence(i, params) for i in ids]
    seqs[1].cancelled = lambda: rounds["n"] >= 3
    for s in seqs:
        batch_engine.add(s)
    while batch_engine.active:
        before = len(batch_engine.active)
        batch_engine.step()
        rounds["n"] += 1
        if rounds["n"] == 4:  # cancelled at the start of round 4: its slot is free after it
            assert seqs[1].done and seqs[1].result.finish_reason == "cancelled"
            assert len(batch_engine.active) <= before - 1 and seqs[1] not in batch_engine.active
    assert 0 < len(seqs[1].result.token_ids) < 40
    for i in (0, 2, 3):
        assert seqs[i].result.token_ids == alone[i]


def test_ignore_eos_in_a_batch_runs_to_the_budget_as_alone(engine, batch_engine):
    """Chat prompts whose greedy answers end on an EOS id (at once, after 43 tokens) share passes
    with one that does not ignore it: each gives what it gives alone."""
    items = [{"kind": "chat", "prompt": q} for q in ("Tell me about exceptions.", "What is a lambda in Python?")]
    ids = [prompt_ids(item, engine.tokenizer) for item in items + [PROMPTS[0]]]
    params = [SamplingParams(max_new_tokens=48, speculator="ngram", ignore_eos=True),
              SamplingParams(max_new_tokens=48, speculator="draft", k_draft=3, ignore_eos=True),
              SamplingParams(max_new_tokens=48, speculator="none")]
    results = batch_engine.generate_all([Sequence(i, p) for i, p in zip(ids, params)])
    for i, (res, p) in enumerate(zip(results, params)):
        alone = engine.generate(ids[i], SamplingParams(max_new_tokens=48, speculator="none", ignore_eos=p.ignore_eos))
        assert res.token_ids == alone.token_ids and res.finish_reason == alone.finish_reason, f"prompt {i}"
    assert all(len(r.token_ids) == 48 and r.finish_reason == "length" for r in results[:2])
    assert any(t in engine.eos_ids for r in results[:2] for t in r.token_ids)


def test_width_falls_as_the_batch_grows(batch_engine):
    """The same offers: one sequence gets a long round, many share a short one."""
    from specops.engine.adaptive import CostModel
    from specops.speculators.base import Proposal

    engine = BatchEngine(batch_engine.target, batch_engine.tokenizer,
                         CostModel(verify_s=[1.0 + 0.2 * n for n in range(17)], draft_s=None))
    engine.cost.observe_round("ngram2", 4, 3)  # acceptance estimate 0.65
    offer = Proposal(np.arange(6), None, "ngram", match=2)
    widths = []
    for n in (1, 2, 4, 8):
        engine.active = [Sequence([1], SamplingParams()) for _ in range(n)]
        widths.append(engine.choose_width([offer] * n))
    engine.active = []
    assert widths[0] > 1 and widths == sorted(widths, reverse=True) and widths[-1] < widths[0]


def _sampled(batch_engine, speculator: str, seed0: int) -> Counter:
    ids = batch_engine.tokenizer.encode(PROMPT)
    out = Counter()
    for start in range(0, N, 4):
        seqs = [Sequence(ids, SamplingParams(max_new_tokens=3, temperature=1.0, top_k=3, seed=seed0 + start + i,
                                             speculator=speculator, k_draft=2, adaptive_k=False)) for i in range(4)]
        for res in batch_engine.generate_all(seqs):
            out[tuple(res.token_ids)] += 1
    return out


@pytest.fixture(scope="module")
def reference(engine):
    from test_sampling_engine import sequences

    return sequences(engine, "none", 0)


@pytest.mark.parametrize("speculator", ["draft", "ngram"])
def test_sampling_in_a_batch_of_four_keeps_the_target_distribution(batch_engine, reference, speculator):
    got = _sampled(batch_engine, speculator, 40_000)
    assert len(reference) > 3
    assert homogeneity_pvalue(reference, got) > ALPHA
