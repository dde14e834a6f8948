"""The quality gate can fail: a broken speculator and an unreachable floor give exit 1 with a
line naming the speculator, the figure and the floor (a small run of the real gate)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_floors(tmp_path) -> Path:
    floors = json.loads((ROOT / "benchmarks" / "ci_floors.json").read_text())
    floors["run"].update(sets=["copy"], prompts=3, repeats=1, max_new_tokens=24,
                         speculators=["none", "ngram", "draft"])
    for per_set in floors["floors"].values():
        for f in per_set.values():
            f.pop("speedup", None)  # behaviour, not speed, is under test here
    path = tmp_path / "floors.json"
    path.write_text(json.dumps(floors))
    return path


def gate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "ci_benchmark.py"), *args],
                          capture_output=True, text=True, timeout=600)


def test_gate_passes_on_the_real_speculators(small_floors, tmp_path):
    out = gate("--floors", str(small_floors), "--json", str(tmp_path / "gate.json"))
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads((tmp_path / "gate.json").read_text())
    assert report["failures"] == [] and report["sets"]["copy"]["draft"]["tpj"] > 1.0


def test_gate_fails_on_a_speculator_that_proposes_random_tokens(small_floors):
    out = gate("--floors", str(small_floors), "--break-speculator", "draft")
    assert out.returncode == 1
    assert "FAIL copy/draft: TPJ" in out.stdout and "<= floor 1.0" in out.stdout
    # random proposals are rejected by verification: the output stays exact
    assert "greedy output differs" not in out.stdout


def test_gate_fails_under_an_unreachable_floor(small_floors):
    out = gate("--floors", str(small_floors), "--tpj-floor", "50")
    assert out.returncode == 1 and "FAIL copy/ngram: TPJ" in out.stdout
