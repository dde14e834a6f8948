"""The start-up cost curve kept per model file, CPU and settings: the key, the check by a few
passes and the rescaling (literal curves), and a second load of the small pair that reads the
curve the first one timed."""
from __future__ import annotations

import json
import logging

import pytest

from specops import cost_cache
from specops.config import Settings
from specops.engine.adaptive import CostModel
from specops.loader import load_engine
from specops.runtime import batch_decoder

CURVE = CostModel(verify_s=[0.010, 0.013, 0.016], draft_s=0.002, verify_after_draft_s=[0.011, 0.014, 0.017])


def test_key_follows_the_file_and_the_settings(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x" * 10)
    (tmp_path / "model.onnx.data").write_bytes(b"y" * 100)
    key = cost_cache.cost_key(model, None, threads=2, precision="fp32")
    assert key == cost_cache.cost_key(model, None, threads=2, precision="fp32")
    assert key != cost_cache.cost_key(model, None, threads=1, precision="fp32")
    assert key != cost_cache.cost_key(model, None, threads=2, precision="int8")
    (tmp_path / "model.onnx.data").write_bytes(b"y" * 101)  # other weights: another curve
    assert key != cost_cache.cost_key(model, None, threads=2, precision="fp32")


def test_round_trip_drift_and_rescale(tmp_path):
    assert cost_cache.save(tmp_path, "k", CURVE)
    back = cost_cache.load(tmp_path, "k")
    assert (back.verify_s, back.draft_s, back.verify_after_draft_s) == (CURVE.verify_s, 0.002, CURVE.verify_after_draft_s)
    assert cost_cache.load(tmp_path, "missing") is None
    factor = cost_cache.drift(CURVE, {1: 0.020, 3: 0.032})  # both lengths twice as slow today
    assert factor == pytest.approx(2.0)
    scaled = cost_cache.rescaled(CURVE, factor)
    assert scaled.verify_s == pytest.approx([0.020, 0.026, 0.032]) and scaled.draft_s == pytest.approx(0.004)
    assert scaled.verify_after_draft_s == pytest.approx([0.022, 0.028, 0.034])
    assert cost_cache.usable(1.9) and not cost_cache.usable(2.5) and not cost_cache.usable(0.4)


def test_an_unwritable_folder_is_only_read(tmp_path):
    (tmp_path / "ro").write_text("a file where the folder should be")
    assert not cost_cache.save(tmp_path / "ro", "k", CURVE)


def test_a_second_load_reuses_the_timed_curve(tmp_path, caplog, monkeypatch):
    # a shared machine's load can swing a pass 3x between two loads, which would (rightly) re-time
    monkeypatch.setattr(cost_cache, "MAX_DRIFT", 100.0)
    monkeypatch.setattr(batch_decoder, "_TIMED", {})  # as in a fresh process: nothing timed yet
    settings = Settings(kernel_cache_dir=str(tmp_path), max_batch=1, cost_cache=True)
    with caplog.at_level(logging.INFO, logger="specops.loader"):
        first = load_engine(settings)
        second = load_engine(settings)
    messages = [r.getMessage() for r in caplog.records if r.name == "specops.loader"]
    assert any("timed in" in m and "cached as" in m for m in messages)
    assert any("cached curve" in m and "checked in" in m for m in messages)
    assert len(list((tmp_path / "costs").glob("*.json"))) == 1
    if first.target.kernel == "tiled":  # the per-precision step times are kept beside the tiles
        [timings] = (tmp_path / "timings").glob("*.json")
        assert set(json.loads(timings.read_text())) == set(first.target.precision_ms)
    ratio = second.cost.verify_s[0] / first.cost.verify_s[0]
    assert second.cost.verify_s == pytest.approx([s * ratio for s in first.cost.verify_s])  # its shape kept


def test_the_sweep_times_a_few_lengths_and_reads_the_rest_off_the_line():
    from specops.loader import _smooth, timed_lengths

    assert timed_lengths(16) == [17, 9, 5, 3, 2, 1] and timed_lengths(1) == [2, 1]
    # 1 token as timed; 2..6 on the line through 2, 3, 5 (1 ms a token here)
    assert _smooth({1: 3.0, 2: 4.0, 3: 5.0, 5: 7.0}, 6) == pytest.approx([3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
