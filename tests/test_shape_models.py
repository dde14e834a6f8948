"""Shape models: a builder export whose second layer is repeated to full depth still loads and runs
in the decoder, with one KV cache per layer."""
import dataclasses

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime_genai")
onnx = pytest.importorskip("onnx")

from specops.runtime.decoder import Decoder  # noqa: E402
from specops.runtime.model_folder import read_model_folder  # noqa: E402
from specops_build.shape_models import SHAPES, build  # noqa: E402


def test_layers_repeat_to_full_depth(tmp_path):
    tiny = dataclasses.replace(SHAPES["tinyllama-int4"], name="tiny", hidden=128, intermediate=256, layers=5,
                               heads=4, kv_heads=2, context=256)
    folder = build(tiny, tmp_path / "tiny", tmp_path / "work", log=lambda msg: None)
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    gqa = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    assert [n.name for n in gqa] == [f"/model/layers.{i}/attn/GroupQueryAttention" for i in range(5)]
    # each layer reads the previous one's output; the final norm reads the last layer's
    for i in range(2, 5):
        first = next(n for n in graph.node if n.name == f"/model/layers.{i}/input_layernorm/SkipLayerNorm")
        assert all(f"/model/layers.{i - 1}/" in x for x in first.input[:2])
    final = next(n for n in graph.node if "final_norm" in n.name)
    assert all("/model/layers.4/" in x for x in final.input[:2])
    assert {i.name for i in graph.input} >= {f"past_key_values.{i}.{kv}" for i in range(5) for kv in ("key", "value")}

    decoder = Decoder(read_model_folder(folder, verify=False))
    assert decoder.spec.num_layers == 5
    decoder.prefill(np.arange(20) % 100 + 3)
    logits = decoder.append([5, 6, 7])
    assert logits.shape == (3, 32000) and np.isfinite(logits).all()
    # the repeated layers attend to their own cache: rewinding and replaying gives the same logits
    decoder.rewind(20)
    assert np.array_equal(decoder.append([5, 6, 7]), logits)
