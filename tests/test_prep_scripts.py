"""The two preparation steps of the production plan, run for real (their command lines) on the
embedded default models: prepack the target's (and draft's) weights, and quantize an fp32
draft to int4. The default draft is already int4, so the test first turns it back into an fp32
MatMul/Gather graph with the same weights, then checks that the script quantizes it again and
that the result runs with logits close to the fp32 model's."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from specops.budget import PREPACKED_MARKER, figures_from_spec
from specops.runtime.decoder import Decoder
from specops.runtime.model_folder import read_model_folder

ROOT = Path(__file__).resolve().parents[1]
IDS = [1, 415, 2253, 17354, 1701, 29916, 432, 3427, 975, 278]


def run_script(name: str, *args) -> dict:
    """Run scripts/<name> as a user would; it prints one JSON line."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def logits(folder: Path) -> np.ndarray:
    spec = read_model_folder(folder)  # also verifies the folder's manifest.sha256
    return Decoder(spec, capacity=64).append([i % spec.vocab_size for i in IDS])


# -- prepack ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["target", "draft"])
def test_prepack_writes_mapped_weights_with_the_same_logits(which, target_folder, draft_folder, tmp_path):
    src = {"target": target_folder, "draft": draft_folder}[which]
    dst = tmp_path / f"{which}-prepacked"
    record = run_script("prepack_target.py", src, dst)

    assert record["prepacked_initializers"] > 0 and record["resident_weight_bytes"] > 0
    marker = json.loads((dst / PREPACKED_MARKER).read_text())
    assert marker == {k: record[k] for k in marker}
    spec = read_model_folder(dst)
    assert spec.layout == read_model_folder(src).layout and spec.model_file.name == read_model_folder(src).model_file.name
    # The optimized graph keeps its weights outside the .onnx, with the prepacked blobs beside them.
    entries = [{e.key: e.value for e in t.external_data}
               for t in onnx.load(str(spec.model_file), load_external_data=False).graph.initializer]
    assert sum(any(k.startswith("prepacked") for k in e) for e in entries) == record["prepacked_initializers"]
    np.testing.assert_allclose(logits(dst), logits(src), atol=1e-4)
    # The budget now counts mapped weights and no heap copy at load.
    figures, note = figures_from_spec(spec, which)
    assert (figures.weight_bytes, figures.load_extra_bytes, note) == (record["resident_weight_bytes"], 0, None)


def test_prepack_can_switch_matmulnbits_to_float_compute(target_folder, tmp_path):
    """Accuracy level 4 (int8 compute) packs scales and block sums beside the int4 codes; level 1
    (fp32 compute) packs them 1:1. This is what keeps Phi-3's resident weights at 2.7 GB."""
    packed = {level: run_script("prepack_target.py", target_folder, tmp_path / str(level), "--accuracy-level", level)
              for level in (1, 4)}
    assert packed[1]["accuracy_level"] == 1 and packed[1]["max_logit_diff"] <= 1e-3  # same graph, exact
    assert packed[1]["prepacked_bytes"] == packed[1]["untouched_original_bytes"]
    assert packed[1]["resident_weight_bytes"] <= packed[4]["resident_weight_bytes"]
    nodes = onnx.load(str(read_model_folder(tmp_path / "1").model_file), load_external_data=False).graph.node
    levels = {helper.get_attribute_value(a) for n in nodes if n.op_type == "MatMulNBits"
              for a in n.attribute if a.name == "accuracy_level"}
    assert levels == {1}
    ref, got = logits(target_folder), logits(tmp_path / "1")
    assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max()  # int8 vs fp32 activations: close


# -- quantize --------------------------------------------------------------------------------------
def dequantize(src: Path, dst: Path) -> None:
    """MatMulNBits -> MatMul and GatherBlockQuantized -> Gather with the fp32 weights they encode
    (4-bit, blocks along K / the hidden axis, symmetric: unsigned codes offset by 8, or signed)."""
    model = onnx.load(str(src))
    weights = {t.name: t for t in model.graph.initializer}
    nodes, added, dropped = [], [], set()
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMulNBits":
            packed = numpy_helper.to_array(weights[node.input[1]])  # [N, blocks, block/2] uint8
            scales = numpy_helper.to_array(weights[node.input[2]]).reshape(packed.shape[0], packed.shape[1], 1)
            codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:2], -1)  # low nibble first
            w = ((codes.astype(np.float32) - 8) * scales).reshape(packed.shape[0], -1)[:, :attrs["K"]]  # [N, K]
            name, inputs = node.input[1] + "_fp32", [node.input[0], node.input[1] + "_fp32"]
            added.append(numpy_helper.from_array(np.ascontiguousarray(w.T), name))  # MatMul wants [K, N]
            nodes.append(helper.make_node("MatMul", inputs, list(node.output), name=node.name))
            dropped |= {node.input[1], node.input[2]}
        elif node.op_type == "GatherBlockQuantized":
            codes = numpy_helper.to_array(weights[node.input[0]]).astype(np.float32)  # [V, H] int4
            scales = numpy_helper.to_array(weights[node.input[2]])  # [V, H / block]
            w = (codes.reshape(codes.shape[0], scales.shape[1], -1) * scales[..., None]).reshape(codes.shape)
            name = node.input[0] + "_fp32"
            added.append(numpy_helper.from_array(w, name))
            nodes.append(helper.make_node("Gather", [name, node.input[1]], list(node.output), name=node.name, axis=0))
            dropped |= {node.input[0], node.input[2]}
        else:
            nodes.append(node)
    kept = [t for t in model.graph.initializer if t.name not in dropped]
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(kept + added)
    onnx.save_model(model, str(dst))


def op_counts(model_file: Path) -> dict[str, int]:
    ops = [n.op_type for n in onnx.load(str(model_file), load_external_data=False).graph.node]
    return {k: ops.count(k) for k in ("MatMul", "Gather", "MatMulNBits", "GatherBlockQuantized")}


@pytest.fixture(scope="module")
def fp32_draft(draft_folder, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("draft-fp32")
    spec = read_model_folder(draft_folder)
    for path in draft_folder.iterdir():
        if path.is_file() and not path.name.startswith(spec.model_file.name) and path.name != "manifest.sha256":
            shutil.copy(path, folder / path.name)
    dequantize(spec.model_file, folder / "model.onnx")
    return folder


def test_dequantized_draft_is_a_faithful_fp32_model(fp32_draft, draft_folder):
    counts = op_counts(fp32_draft / "model.onnx")
    assert counts["MatMulNBits"] == counts["GatherBlockQuantized"] == 0
    original = op_counts(read_model_folder(draft_folder).model_file)
    assert counts["MatMul"] == original["MatMul"] + original["MatMulNBits"]
    ref, got = logits(draft_folder), logits(fp32_draft)
    assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max()  # int8 activations at accuracy level 4


def test_quantize_draft_makes_an_int4_model_that_runs_close_to_fp32(fp32_draft, draft_folder, tmp_path):
    dst = tmp_path / "draft-int4"
    record = run_script("quantize_draft.py", fp32_draft, dst)

    assert (record["bits"], record["block_size"], record["symmetric"]) == (4, 32, True)
    counts, original = op_counts(dst / "model.onnx"), op_counts(read_model_folder(draft_folder).model_file)
    assert counts["MatMulNBits"] == original["MatMulNBits"] and counts["GatherBlockQuantized"] == 1
    assert counts["MatMul"] == original["MatMul"]  # left: activation x activation (attention)
    assert (dst / "model.onnx_data").stat().st_mode & 0o044  # readable by a non-root server
    fp32_bytes = sum(p.stat().st_size for p in fp32_draft.glob("model.onnx*"))
    assert sum(p.stat().st_size for p in dst.glob("model.onnx*")) < fp32_bytes / 3
    ref, got = logits(fp32_draft), logits(dst)
    assert np.abs(ref - got).max() < 0.1 * np.abs(ref).max()
    assert np.mean(ref.argmax(-1) == got.argmax(-1)) >= 0.9
    assert record["top1_agreement"] >= 0.9
