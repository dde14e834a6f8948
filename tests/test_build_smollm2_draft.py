"""The SmolLM2 draft's build (scripts/build_smollm2_draft.py --smoke): every stage, tiny, against
the served SmolLM2 folder. Needs the `build` extra, onnxruntime-genai and the prepared target;
skipped where any is absent (as in CI)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime_genai")

ROOT = Path(__file__).resolve().parents[1]
SERVED = Path.home() / ".cache/specops/prepared/smollm2-135m-instruct"


@pytest.mark.skipif(not (SERVED / "genai_config.json").exists(), reason="SmolLM2 target not prepared")
def test_smoke_build_gives_a_verified_folder_the_decoder_loads(tmp_path):
    from specops.runtime.decoder import Decoder
    from specops.runtime.model_folder import read_model_folder, verify_manifest
    from specops.runtime.tokenizer import TextTokenizer
    from specops.speculators.vocab_bridge import VocabBridge

    out = tmp_path / "draft"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_smollm2_draft.py"), "--smoke",
                          "--work", str(tmp_path / "work"), "--out", str(out), "--target-onnx", str(SERVED)],
                         capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert verify_manifest(out) >= 5
    spec = read_model_folder(out)  # verifies the manifest again
    dec = Decoder(spec, capacity=64)
    logits = dec.append([1, 9690, 198], all_logits=True)
    assert logits.shape == (3, spec.vocab_size) and spec.vocab_size < 49152
    # the service's bridge accepts the pair: the draft's ids mean the target's pieces
    bridge = VocabBridge(TextTokenizer(SERVED), TextTokenizer(out), 49152, spec.vocab_size)
    assert bridge.shared == spec.vocab_size
    manifest = (out / "draft_manifest.json").read_text()
    assert "SmolLM2-135M-Instruct" in manifest and "b179c9523d0e6a0f" in manifest
