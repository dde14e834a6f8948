"""The benchmark's summary (specops.bench): what enters the medians."""
import dataclasses

from specops.bench import Interleaved, mode_speedups, parse_speculator, peer_ratios, run_interleaved, summarize
from specops.runtime.tokenizer import ChatMessage


def _ended_at_once(result):
    """The same run as if the target had chosen end-of-text first (no token, no rate)."""
    stats = dataclasses.replace(result.stats, generated_tokens=0)
    return dataclasses.replace(result, token_ids=[], text="", stats=stats)


def test_a_prompt_that_ends_at_once_is_left_out_of_the_rates(engine):
    ids = engine.tokenizer.encode("def read_config(path):\n")
    run = run_interleaved(engine, [ids], ["none", "ngram"], 2, 8, 4)
    alone = summarize(run.results, engine, 4)
    with_ended = {s: runs + [[_ended_at_once(r) for r in runs[0]]] for s, runs in run.results.items()}
    both = summarize(with_ended, engine, 4)
    for key in ("speedup", "tok_s"):
        assert both["ngram"][key] == alone["ngram"][key] > 0
    only_ended = summarize({s: [[_ended_at_once(r) for r in runs[0]]] for s, runs in run.results.items()}, engine, 4)
    assert only_ended["ngram"]["speedup"] is None and only_ended["ngram"]["of_bound"] is None


def test_peers_run_inside_the_interleaved_loop_and_ratios_pair_runs(engine, monkeypatch):
    generated, calls = [], []
    generate = engine.generate
    monkeypatch.setattr(engine, "generate", lambda *a, **kw: generated.append(1) or generate(*a, **kw))

    def peer(ids, max_new_tokens):  # a peer that always reports 100 tokens/s
        calls.append((len(ids), max_new_tokens, len(generated)))
        return 100.0

    prompts = [engine.tokenizer.encode("import os\n"), engine.tokenizer.encode("class A:\n")]
    run = run_interleaved(engine, prompts, ["none"], 2, 6, 4, peers={"p": peer})
    # each peer run follows our run of the same prompt and repeat
    assert calls == [(len(prompts[i % 2]), 6, i + 1) for i in range(4)]
    rates = sorted(r.stats.tokens_per_second / 100.0 for runs in run.results["none"] for r in runs)
    ratio = peer_ratios(run, {"none": ["p"]})["none_vs_p"]
    assert ratio == round((rates[1] + rates[2]) / 2, 3)


def test_ignore_eos_runs_every_speculator_to_the_budget(engine):
    # the small target's greedy answer to this one is an EOS id first
    ids = engine.tokenizer.encode(engine.tokenizer.apply_chat_template([ChatMessage("user", "Tell me about exceptions.")]))
    ended = run_interleaved(engine, [ids], ["none"], 1, 6, 4)
    assert ended.results["none"][0][0].token_ids == []
    run = run_interleaved(engine, [ids], ["none", "ngram"], 1, 6, 4, ignore_eos=True)
    assert all(len(r.token_ids) == 6 for runs in run.results.values() for r in runs[0])


def test_mode_speedups_pair_each_mode_with_target_only_in_the_same_run():
    rates = {"x_none": [[10.0, 20.0], [10.0, 0.0]], "x_ngram": [[30.0, 20.0], [15.0, 50.0]],
             "x_auto": [[0.0, 0.0], [0.0, 0.0]]}  # no rate: left out
    run = Interleaved({}, rates)
    assert mode_speedups(run, "x", ("ngram", "auto")) == {"ngram": 1.5}  # median of 3.0, 1.0, 1.5


def test_parse_speculator():
    assert parse_speculator("draft") == ("draft", True)
    assert parse_speculator("draft@fixed") == ("draft", False)
