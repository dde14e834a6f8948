"""The default pair has different vocabularies (32064 vs 32000 rows): the bridge checks the
shared pieces, feeds target-only ids to the draft as text, and never proposes them."""
import json
import shutil

import numpy as np
import pytest

from specops.runtime.tokenizer import TextTokenizer
from specops.speculators.vocab_bridge import VocabBridge, VocabMismatchError


@pytest.fixture(scope="module")
def toks(target_folder, draft_folder):
    return TextTokenizer(target_folder), TextTokenizer(draft_folder)


def test_default_pair_bridges(toks):
    bridge = VocabBridge(*toks, 32064, 32000)
    assert bridge.shared == 32000 and not bridge.identity
    end = toks[0].encode("<|end|>")
    assert end == [32007]
    assert bridge.to_draft([100, 32007, 101]) == [100, *toks[1].encode("<|end|>"), 101]
    assert all(i < 32000 for i in bridge.to_draft(list(range(32000, 32064))))


def test_draft_probabilities_are_zero_outside_its_vocabulary(toks):
    bridge = VocabBridge(*toks, 32064, 32000)
    q = np.full((2, 32000), 1 / 32000)
    full = bridge.probs_to_target(q)
    assert full.shape == (2, 32064) and np.all(full[:, 32000:] == 0)
    np.testing.assert_allclose(full.sum(axis=-1), 1.0)


def test_refuses_a_draft_whose_shared_pieces_differ(tmp_path, toks, draft_folder):
    bad = tmp_path / "draft"
    shutil.copytree(draft_folder, bad)
    tok = json.loads((bad / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[500:502]  # swap ids 500 and 501
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (bad / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(VocabMismatchError, match="disagree at id 500"):
        VocabBridge(toks[0], TextTokenizer(bad), 32064, 32000)


def test_chat_prompt_with_target_only_tags_runs_through_the_draft(engine):
    from specops.engine.sampling_params import SamplingParams
    from specops.runtime.tokenizer import ChatMessage

    chat = engine.tokenizer.apply_chat_template([ChatMessage("user", "Explain lambda.")])
    ids = engine.tokenizer.encode(chat + "A lambda is")  # an answer under way: decoding goes on
    assert any(i >= 32000 for i in ids)
    res = engine.generate(ids, SamplingParams(max_new_tokens=16, speculator="draft", k_draft=4, adaptive_k=False))
    assert res.stats.draft_passes > 0
