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


def _weights_by_node(folder):
    """{MatMulNBits node: its B bytes}, read from the external data file."""
    from specops_build.materialize import _raw_bytes

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    inits = {t.name: t for t in graph.initializer}
    return graph, {n.name: _raw_bytes(inits[n.input[1]], folder) for n in graph.node if n.op_type == "MatMulNBits"}


def test_materialized_layers_have_their_own_weights(tmp_path):
    """--materialize: every layer's matmuls read their own, distinct bytes, the data file grows to
    the full depth's size, and the model still runs."""
    tiny = dataclasses.replace(SHAPES["phi3-mini-int4"], name="tiny", hidden=128, intermediate=256, layers=5,
                               heads=4, kv_heads=4, context=256)
    shared = build(tiny, tmp_path / "shared", tmp_path / "work", log=lambda msg: None)
    own = build(tiny, tmp_path / "own", tmp_path / "work", log=lambda msg: None, materialize=True)
    _, weights = _weights_by_node(own)
    assert len(weights) > 5 * 4 and len(weights) % 5 == 1  # the same matmuls per layer; lm_head
    assert len(set(weights.values())) == len(weights)  # no two nodes share bytes
    size = lambda f: sum(p.stat().st_size for p in f.iterdir())  # noqa: E731
    layer = sum(len(b) for name, b in weights.items() if "/layers.1/" in name)
    assert size(own) - size(shared) >= 3 * layer  # layers 2..4 now have their own codes on disk
    decoder = Decoder(read_model_folder(own, verify=False))
    decoder.prefill(np.arange(20) % 100 + 3)
    assert np.isfinite(decoder.append([5, 6, 7])).all()


def test_materialized_optimum_draft(tmp_path):
    """The draft in the Optimum layout: int4 everywhere (no fp32 MatMul on a weight left), every
    layer its own bytes, position_ids and past_key_values inputs, and it runs."""
    from specops_build.shape_models import build_optimum_draft

    tiny = dataclasses.replace(SHAPES["tinyllama-int4"], name="tiny", hidden=128, intermediate=256, layers=5,
                               heads=4, kv_heads=2, context=256)
    folder = build_optimum_draft(tiny, tmp_path / "draft", tmp_path / "work", log=lambda msg: None)
    graph, weights = _weights_by_node(folder)
    inits = {t.name for t in graph.initializer}
    assert not [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert len(weights) == 5 * 4 + 1 and len(set(weights.values())) == len(weights)
    assert {"position_ids", "past_key_values.4.key"} <= {i.name for i in graph.input}
    spec = read_model_folder(folder, verify=False)
    assert spec.layout == "optimum" and spec.num_layers == 5
    decoder = Decoder(spec)
    decoder.prefill(np.arange(20) % 100 + 3)
    assert np.isfinite(decoder.append([5, 6, 7])).all()
