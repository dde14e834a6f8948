"""Stopping and streaming through the engine: the budget is never overshot, stop strings cut
the text, and the streamed deltas add up to the returned text."""
import pytest

from specops.engine.sampling_params import SamplingParams
from specops.engine.stopping import StopCheck
from specops.runtime.tokenizer import ChatMessage

PROMPT = "def read_config(path):\n"
# the small target's greedy answer ends on an EOS id after 43 tokens (models/golden/target_greedy.json)
ENDS_EARLY = "What is a lambda in Python?"


@pytest.mark.parametrize("speculator", ["none", "ngram", "draft", "hybrid", "auto"])
@pytest.mark.parametrize("budget", [1, 2, 7])
def test_never_overshoots_max_new_tokens(engine, speculator, budget):
    res = engine.generate(engine.tokenizer.encode(PROMPT),
                          SamplingParams(max_new_tokens=budget, speculator=speculator, k_draft=8,
                                         adaptive_k=speculator == "auto"))
    assert len(res.token_ids) <= budget
    assert res.finish_reason == "length" or (res.finish_reason == "stop" and len(res.token_ids) < budget)


@pytest.mark.parametrize("speculator", ["none", "draft"])
def test_stream_deltas_add_up_to_the_text(engine, speculator):
    deltas = []
    res = engine.generate(engine.tokenizer.encode(PROMPT), SamplingParams(max_new_tokens=40, speculator=speculator),
                          on_tokens=lambda ids, text, lps: deltas.append(text))
    assert "".join(deltas) == res.text and len(deltas) >= 2


def test_stop_string_cuts_the_text(engine):
    ids = engine.tokenizer.encode(PROMPT)
    full = engine.generate(ids, SamplingParams(max_new_tokens=40, speculator="none"))
    stop = full.text.strip()[:3]
    assert stop, "the model produced only whitespace"
    res = engine.generate(ids, SamplingParams(max_new_tokens=40, speculator="draft", stop=(stop,)))
    assert res.finish_reason == "stop" and res.text == full.text[:full.text.find(stop)]
    streamed = []
    engine.generate(ids, SamplingParams(max_new_tokens=40, speculator="ngram", stop=(stop,)),
                    on_tokens=lambda i, t, lps: streamed.append(t))
    assert "".join(streamed) == res.text


def test_cancel_stops_within_a_round(engine):
    calls = []
    res = engine.generate(engine.tokenizer.encode(PROMPT), SamplingParams(max_new_tokens=200, speculator="none"),
                          cancelled=lambda: calls.append(1) or len(calls) >= 3)
    assert res.finish_reason == "cancelled" and len(res.token_ids) == 3


def test_eos_is_dropped_and_ends_the_generation():
    stop = StopCheck(frozenset({9}), max_new_tokens=10)
    assert stop.cut_tokens(0, [4, 9, 5]) == ([4], "stop")
    assert stop.cut_tokens(8, [4, 5, 6]) == ([4, 5], "length")
    assert StopCheck(frozenset(), 10, ("END",)).safe_prefix("abc EN") == "abc "


def test_ignore_eos_keeps_an_eos_and_runs_to_the_budget():
    stop = StopCheck(frozenset({9}), max_new_tokens=5, stop=("END",), ignore_eos=True)
    assert stop.cut_tokens(0, [4, 9, 5]) == ([4, 9, 5], None)  # an EOS mid-round is an ordinary token
    assert stop.cut_tokens(3, [9, 9, 9]) == ([9, 9], "length")
    assert stop.cut_text("a END b") == ("a ", True)  # stop strings still stop
    params = SamplingParams(max_new_tokens=5, stop=("END",), ignore_eos=True)
    assert StopCheck.for_request(frozenset({9}), params) == stop


@pytest.mark.parametrize("speculator", ["none", "draft"])
def test_ignore_eos_generates_the_whole_budget_where_greedy_ends_early(engine, speculator):
    ids = engine.tokenizer.encode(engine.tokenizer.apply_chat_template([ChatMessage("user", ENDS_EARLY)]))
    budget = 48
    ended = engine.generate(ids, SamplingParams(max_new_tokens=budget, speculator=speculator))
    assert ended.finish_reason == "stop" and len(ended.token_ids) < budget - 2, "the prompt no longer ends early"
    res = engine.generate(ids, SamplingParams(max_new_tokens=budget, speculator=speculator, ignore_eos=True))
    n = len(ended.token_ids)
    assert len(res.token_ids) == res.stats.generated_tokens == budget and res.finish_reason == "length"
    assert res.token_ids[:n] == ended.token_ids and res.token_ids[n] in engine.eos_ids  # the EOS is kept
    assert not res.stats.eos_committed and res.text.startswith(ended.text)  # an EOS id decodes to nothing


def test_prompt_at_the_context_cap_is_refused(engine):
    with pytest.raises(ValueError, match="context cap"):
        engine.generate([5] * engine.capacity, SamplingParams(max_new_tokens=1))
