"""Target-only greedy output equals onnxruntime-genai's greedy generator (recorded at build
time in models/golden/target_greedy.json, so no onnxruntime-genai is needed here).

Where a token differs, the test proves it is a near-tie: at the first differing position the
target's top two logits are within NEAR_TIE, and the two tokens are those two."""
import json

import pytest

from specops.config import EMBEDDED_MODELS
from specops.engine.sampling_params import SamplingParams
from specops.runtime.model_folder import verify_manifest

from conftest import NEAR_TIE, first_divergence, top2_gap

GOLDEN = EMBEDDED_MODELS / "golden" / "target_greedy.json"


def golden():
    return json.loads(GOLDEN.read_text())


def golden_records():
    return golden()["records"]


def test_golden_file_is_intact():
    assert verify_manifest(GOLDEN.parent) >= 1
    assert len(golden_records()) >= 10


@pytest.mark.parametrize("index", range(16))
def test_runner_greedy_equals_onnxruntime_genai(engine, target_folder, index):
    records = golden_records()
    if target_folder != EMBEDDED_MODELS / "target":
        pytest.fail("golden ids are recorded for the embedded target only")
    rec = records[index]
    assert engine.tokenizer.encode(rec["prompt"]) == rec["prompt_ids"]  # same tokenizer behaviour
    budget = golden()["max_new_tokens"]
    expected = [t for t in rec["output_ids"] if t not in engine.eos_ids]
    ended_on_eos = len(expected) < budget  # onnxruntime-genai stopped early: it met an EOS id
    result = engine.generate(rec["prompt_ids"], SamplingParams(max_new_tokens=budget, speculator="none"))
    got = result.token_ids
    i = first_divergence(got, expected)
    if i is None:
        assert result.finish_reason == ("stop" if ended_on_eos else "length")
        return
    gap, top = top2_gap(target_folder, rec["prompt_ids"] + expected[:i])
    assert gap < NEAR_TIE and {got[i], expected[i]} <= set(top), (
        f"diverged at {i}: ours {got[i]}, onnxruntime-genai {expected[i]}, top-2 gap {gap:.2e} {top}")
