"""`specops profile`: the measured pass curve and the speedups it predicts."""
import json
import subprocess
import sys

import pytest

from specops.loader import resolve_kernel
from specops.profile import Curve, predictions
from specops.runtime.model_folder import read_model_folder


def test_profile_cli_reports_both_paths_and_the_draft():
    out = subprocess.run([sys.executable, "-m", "specops.cli", "profile", "--target", "models/target", "--draft",
                          "models/draft", "--max-tokens", "4", "--rounds", "1", "--past", "32", "--json"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert len(body["baseline_verify_ms"]) == len(body["verify_ms"]) == 4
    assert all(ms > 0 for ms in body["baseline_verify_ms"] + body["verify_ms"])
    # the small int4 target's one-row pass agrees with its multi-token pass: no two-row steps;
    # the engine's path is its own graph and kernel (tiled where it runs), timed apart from stock
    assert body["one_row_kernel_differs"] is False
    kernel, why = resolve_kernel("auto", read_model_folder("models/target"))
    assert (body["kernel"], body["kernel_note"]) == (kernel, why)
    assert body["one_row_ms"] == body["verify_ms"][0]  # one-token passes run one row wide here
    assert body["draft"] == "models/draft" and body["draft_pass_ms"] > 0
    assert body["c"] == pytest.approx(body["draft_pass_ms"] / body["verify_ms"][0], rel=1e-3)
    assert set(body["predicted"]) == {"ngram", "draft"}
    for rows in body["predicted"].values():
        assert [r["acceptance"] for r in rows] == [0.5, 0.6, 0.7, 0.8, 0.9]
        assert all(1 <= r["k"] <= 3 for r in rows)
        speedups = [r["speedup"] for r in rows]
        assert speedups == sorted(speedups)  # more acceptance never predicts less
    assert all(d["speedup"] <= n["speedup"] for d, n in zip(body["predicted"]["draft"], body["predicted"]["ngram"]))


def test_profile_table_is_readable():
    out = subprocess.run([sys.executable, "-m", "specops.cli", "profile", "--target", "models/target", "--draft",
                          "none", "--max-tokens", "3", "--rounds", "1", "--past", "16"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert "stock onnxruntime" in out.stdout and "ngram" in out.stdout and "draft " not in out.stdout
    assert "engine (tiled )" in out.stdout or "stock kernels on the engine path" in out.stdout


def test_flat_curve_proposes_long_and_a_full_pass_per_token_never_pays():
    flat = predictions(Curve([10.0] * 9, 1), c=None)["ngram"]
    assert flat[-1]["k"] == 8 and flat[-1]["speedup"] == pytest.approx((1 - 0.9 ** 9) / 0.1, rel=1e-3)
    linear = predictions(Curve([10.0 * n for n in range(1, 10)], 1), c=0.1)
    assert all(r["speedup"] <= 1.0 for rows in linear.values() for r in rows)


def test_draft_cost_lowers_the_prediction():
    curve = Curve([10.0, 11.0, 12.5, 14.0, 16.0], 1)
    cheap = predictions(curve, c=0.02)["draft"]
    dear = predictions(curve, c=0.3)["draft"]
    assert all(d["speedup"] < c["speedup"] for c, d in zip(cheap, dear))
    assert all(d["k"] <= c["k"] for c, d in zip(cheap, dear))
