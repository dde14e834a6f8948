"""Grammar constraints (specops/engine/constraint.py) on the committed small pair.

Layers: the matcher on literal token lists (the target's tokenizer); the acceptance rule for a
proposal the grammar cut (pure, sampled); the engines (single sequence and batch): every output
matches its grammar, greedy output is the same whatever the speculator (the grammar's forced
tokens ride the verify pass and are counted), and a sampled constrained distribution is the
same with the draft speculator as with target-only sampling (chi-square). The default model's
20 JSON schemas are in tests/test_structured_output.py.
"""
from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest
from scipy.stats import chisquare

from specops.engine.adaptive import expected_tokens
from specops.engine.batch import Sequence
from specops.engine.constraint import GrammarError, constrain
from specops.engine.sampling_params import SamplingParams
from specops.engine.verify import accept_sampled
from specops.loader import load_batch_engine
from specops.speculators.base import Proposal

from test_sampling_engine import homogeneity_pvalue

ALPHA = 1e-3
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150},
                                           "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}},
          "required": ["name", "age", "tags"], "additionalProperties": False}
PROMPT = "Give me a JSON object with a name, an age and tags:"


@pytest.fixture(scope="module")
def grammars(engine):
    return engine.grammars


def tokens(grammars, text: str) -> list[int]:
    return grammars.tokenizer.tokenize_str(text)


# -- the matcher on literal token lists ------------------------------------------------------
def test_mask_rows_follow_the_proposal_and_roll_back(grammars):
    c = grammars.constraint(grammars.regex("(yes|no)!"))
    yes = tokens(grammars, "yes")
    logits = np.zeros((len(yes) + 1, grammars.vocab_size), np.float32)
    masked = c.mask(logits, yes)
    assert masked.shape == logits.shape
    assert masked[0, yes[0]] == 0 and np.isneginf(masked[0]).sum() == grammars.vocab_size - np.isfinite(masked[0]).sum()
    assert set(np.flatnonzero(np.isfinite(masked[-1]))) == set(tokens(grammars, "!"))  # after "yes": only "!"
    assert c.valid_prefix(yes) == len(yes)  # rolled back: the proposal is still allowed from the start
    c.commit(yes)
    assert c.forced() == tokens(grammars, "!")  # the grammar forces the rest


def test_proposals_are_cut_where_the_grammar_forbids(grammars):
    c = grammars.constraint(grammars.regex("[0-9]+"))
    digits, word = tokens(grammars, "12"), tokens(grammars, "x")
    p = constrain(Proposal(np.asarray(digits + word + digits, np.int64), None, "ngram", match=2), [], c)
    assert p.ids.tolist() == digits and p.source == "ngram" and p.forced == 0 and p.cut_q is None


def test_forced_tokens_lead_and_a_cut_draft_token_keeps_its_distribution(grammars):
    c = grammars.constraint(grammars.regex("Answer:\n(c|d)"))
    forced = c.forced()
    assert grammars.tokenizer.decode_str(forced) == "Answer:\n"
    rest, bad = tokens(grammars, "c"), tokens(grammars, "z")
    q = np.full((len(rest) + 1, grammars.vocab_size), 1.0 / grammars.vocab_size)
    p = constrain(Proposal(np.asarray(rest + bad, np.int64), q, "draft", draft_passes=2), forced, c)
    assert p.ids.tolist() == forced + rest and p.forced == len(forced)
    assert p.q.shape[0] == len(p.ids) and p.q[0, forced[0]] == 1.0  # forced: one-hot rows
    assert p.cut_q is not None and np.array_equal(p.cut_q, q[len(rest)])
    assert p.head(0).cut_q is None and p.head(0).forced == 0


@pytest.mark.parametrize("build,text", [
    (lambda g: g.json_schema({"type": "object", "properties": {"a": {"type": "strin"}}}), "strin"),
    (lambda g: g.json_schema({"type": 5}), "type"),
    (lambda g: g.regex("[0-9]+("), "unclosed group"),
    (lambda g: g.grammar("start: foo\n"), "foo"),
    (lambda g: g.grammar('root ::= "a" | b'), "b"),
])
def test_a_grammar_that_does_not_compile_says_why(grammars, build, text):
    with pytest.raises(GrammarError, match=re.escape(text)):
        build(grammars)


def test_gbnf_grammars_compile(grammars):
    c = grammars.constraint(grammars.grammar('root ::= "yes" | "no"'))
    assert c.valid_prefix(tokens(grammars, "no")) == len(tokens(grammars, "no"))


def test_forced_tokens_are_free_in_the_expected_count():
    assert expected_tokens(0.0, 3, free=3) == 4.0  # all forced, plus the target's own token
    assert expected_tokens(0.0, 3, free=1) == 2.0
    assert expected_tokens(0.5, 2, free=0) == pytest.approx(1.75)


# -- the acceptance rule for a cut proposal (pure) ---------------------------------------------
def test_a_cut_draft_token_keeps_the_masked_target_distribution():
    """The draft drew x ~ q; where the grammar forbids x (p(x) = 0 under the mask) the proposal
    is cut and the token comes from norm(max(0, p - q)), as the rejection it would have been.
    Committed tokens must follow p; sampling p itself after a cut would not (checked too)."""
    p = np.array([0.5, 0.3, 0.2, 0.0, 0.0, 0.0])
    q = np.array([0.1, 0.1, 0.1, 0.3, 0.2, 0.2])
    rng = np.random.default_rng(0)
    exact, naive = Counter(), Counter()
    for _ in range(20_000):
        x = int(rng.choice(6, p=q))
        if p[x] == 0:  # cut
            exact[accept_sampled(np.zeros(0, np.int64), p[None], None, rng, cut_q=q)[1]] += 1
            naive[accept_sampled(np.zeros(0, np.int64), p[None], None, rng)[1]] += 1
        else:
            j, nxt = accept_sampled(np.asarray([x]), np.stack([p, p]), q[None], rng)
            exact[x if j else nxt] += 1
            naive[x if j else nxt] += 1
    n = sum(exact.values())
    assert chisquare([exact[i] for i in range(3)], p[:3] * n).pvalue > ALPHA
    assert chisquare([naive[i] for i in range(3)], p[:3] * n).pvalue < ALPHA
    assert not any(exact[i] for i in range(3, 6))


# -- the engines ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batch_engine(settings):
    return load_batch_engine(settings.model_copy(update={"max_batch": 3}), calibrate=False)


def generate(engine, prompt: str, grammar: str, **kw):
    params = SamplingParams(max_new_tokens=kw.pop("max_new_tokens", 64), grammar=grammar, **kw)
    return engine.generate(engine.tokenizer.encode(prompt), params)


@pytest.mark.parametrize("which", ["single", "batch"])
def test_greedy_output_is_the_same_whatever_the_speculator(request, which):
    engine = request.getfixturevalue("engine" if which == "single" else "batch_engine")
    grammar = engine.grammars.json_schema(SCHEMA)
    base = generate(engine, PROMPT, grammar, speculator="none")
    assert base.finish_reason == "stop" and set(json.loads(base.text)) == {"name", "age", "tags"}
    assert base.stats.forced_proposed == 0
    for speculator in ("ngram", "auto", "draft"):
        res = generate(engine, PROMPT, grammar, speculator=speculator, k_draft=6)
        assert res.token_ids == base.token_ids, speculator
        assert res.stats.forced_accepted > 0 and res.stats.forced_proposed >= res.stats.forced_accepted
        assert res.stats.target_passes < base.stats.target_passes


def test_a_batch_of_constrained_and_free_sequences_equals_each_alone(engine, batch_engine):
    grammars = engine.grammars
    asks = [(PROMPT, grammars.json_schema(SCHEMA)), ("The year was", grammars.regex("[0-9]{4}")),
            ("Once upon a time", None), ("Pick one:", grammars.grammar('root ::= "red" | "green" | "blue"'))]
    seqs = [Sequence(engine.tokenizer.encode(p), SamplingParams(max_new_tokens=40, grammar=g, speculator="auto"))
            for p, g in asks]
    together = batch_engine.generate_all(seqs)
    for (prompt, grammar), res in zip(asks, together):
        alone = generate(engine, prompt, grammar, max_new_tokens=40, speculator="none")
        assert res.token_ids == alone.token_ids, prompt
    assert re.fullmatch("[0-9]{4}", together[1].text) and together[3].text in ("red", "green", "blue")


def test_logprobs_do_not_depend_on_the_speculator_or_the_mask(engine):
    grammar = engine.grammars.json_schema(SCHEMA)
    base = generate(engine, PROMPT, grammar, speculator="none", logprobs=3)
    spec = generate(engine, PROMPT, grammar, speculator="ngram", logprobs=3)
    assert len(base.logprobs) == len(base.token_ids)
    for a, b in zip(base.logprobs, spec.logprobs):
        assert a.token == b.token and a.logprob == pytest.approx(b.logprob, abs=2e-2)  # pass shapes round differently (~5e-3)
        assert [t for t, _ in a.top] == [t for t, _ in b.top] and len(a.top) == 3
    # unmasked: the grammar's first token is not the model's favourite after this prompt
    assert any(lp.top[0][0] != lp.token for lp in base.logprobs)


def test_sampled_constrained_output_keeps_the_masked_target_distribution(engine):
    """Temperature 1 under a grammar with forced stretches between choices: the draft's sampled
    proposals after the forced tokens are mostly cut (drafted prose is not a colour), forced
    tokens ride ahead of them; the distribution of whole outputs must equal target-only
    sampling under the same mask (chi-square test of homogeneity)."""
    grammar = engine.grammars.regex("(yes|no|maybe), (red|green|blue)\\.")
    def outcomes(speculator: str, seed0: int) -> Counter:
        out, drafted = Counter(), 0
        for i in range(300):
            res = generate(engine, "Answer and pick a colour:", grammar, temperature=1.0, seed=seed0 + i,
                           speculator=speculator, k_draft=4, adaptive_k=False, max_new_tokens=16)
            out[res.text] += 1
            drafted += res.stats.proposals_by.get("draft", 0)
        assert speculator == "none" or drafted > 0
        return out
    reference, got = outcomes("none", 0), outcomes("draft", 50_000)
    assert len(reference) >= 4 and all(re.fullmatch("(yes|no|maybe), (red|green|blue)\\.", t) for t in got)
    assert homogeneity_pvalue(reference, got) > ALPHA
