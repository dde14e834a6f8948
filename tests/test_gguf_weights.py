"""specops_build.gguf_weights on synthetic blocks (no real model, no gguf package): GGUF Q4_1 and
Q8_0 rows parsed as ggml lays them out, written into a builder-like MatMulNBits graph, and run by
onnxruntime against numpy's d*q + m matmul."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from specops_build import gguf_weights as gw

K, N_UP, N_HEAD = 64, 96, 40  # K: two blocks of 32; an MLP projection (N_UP: the head's K) and an LM head
rng = np.random.default_rng(7)


def q4_1_raw(codes: np.ndarray, d: np.ndarray, m: np.ndarray) -> np.ndarray:
    """ggml Q4_1 rows [N, K/32 * 20]: per block d, m (fp16) and byte j = element j | element j+16 << 4."""
    n = codes.shape[0]
    c = codes.reshape(n, -1, 32)
    packed = (c[..., :16] | (c[..., 16:] << 4)).astype(np.uint8)
    halves = [x.astype(np.float16).reshape(n, -1, 1).view(np.uint8) for x in (d, m)]
    return np.concatenate(halves + [packed], axis=-1).reshape(n, -1)


def q8_0_raw(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    """ggml Q8_0 rows [N, K/32 * 34]: per block d (fp16), then 32 int8 codes."""
    n = q.shape[0]
    scale = d.astype(np.float16).reshape(n, -1, 1).view(np.uint8)
    return np.concatenate([scale, q.astype(np.int8).reshape(n, -1, 32).view(np.uint8)], axis=-1).reshape(n, -1)


def random_q4_1(n: int) -> tuple[np.ndarray, gw.Blocks]:
    codes = rng.integers(0, 16, (n, K)).astype(np.uint8)
    d = rng.uniform(0.002, 0.05, (n, K // 32)).astype(np.float16).astype(np.float32)
    m = (-8 * d * rng.uniform(0.5, 1.5, d.shape)).astype(np.float16).astype(np.float32)
    return q4_1_raw(codes, d, m), gw.Blocks("Q4_1", codes, d, m)


def test_q4_1_rows_parse_as_ggml_lays_them_out():
    raw, want = random_q4_1(3)
    got = gw.q4_1_blocks(raw)
    assert np.array_equal(got.codes, want.codes) and np.array_equal(got.d, want.d) and np.array_equal(got.m, want.m)
    # byte 4 of a block (its first code byte) holds elements 0 (low nibble) and 16 (high)
    assert raw[0, 4] == want.codes[0, 0] | (want.codes[0, 16] << 4)


def test_q8_0_codes_shift_to_the_default_zero_point():
    q = rng.integers(-128, 128, (2, K))
    d = rng.uniform(0.01, 0.1, (2, K // 32)).astype(np.float16).astype(np.float32)
    blocks = gw.q8_0_blocks(q8_0_raw(q, d))
    assert np.array_equal(blocks.codes.astype(np.int64) - 128, q) and blocks.m is None
    assert np.array_equal(gw.dequantize(blocks.codes, blocks.d, None), (q.astype(np.float32).reshape(2, -1, 32)
                                                                        * d[..., None]).reshape(2, K))


def test_pack4_is_the_inverse_of_unpack4():
    codes = rng.integers(0, 16, (5, K)).astype(np.uint8)
    b = gw.pack4(codes)
    assert b.shape == (5, K // 32, 16) and b[0, 0, 0] == codes[0, 0] | (codes[0, 1] << 4)
    assert np.array_equal(gw.unpack4(b), codes)


def test_llama_rows_undo_the_rotary_interleave():
    # one head of 4 rows: llama.cpp stores the halves' rows interleaved (a0 b0 a1 b1), HF as a0 a1 b0 b1
    assert gw.llama_rows(4, 1).tolist() == [0, 2, 1, 3]
    assert gw.llama_rows(8, 2).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_a_constant_block_needs_m_zero():
    d = np.array([[0.0, 0.5]], np.float32)
    assert gw.zero_points(d, np.array([[0.0, -1.0]], np.float32), "x").tolist() == [[0.0, 2.0]]
    with pytest.raises(gw.WeightMismatch, match="d == 0 and m != 0"):
        gw.zero_points(d, np.array([[0.25, -1.0]], np.float32), "x")


def builder_like_model(n_up: int, n_head: int) -> onnx.ModelProto:
    """Two MatMulNBits as onnxruntime-genai's int8 export writes them (bits 8, 3 inputs, level 4):
    an MLP projection then the LM head, weights [N, K/32, 32] and scales [N, K/32]."""
    nodes, inits = [], []
    for name, prefix, n, x, y in (("/model/layers.0/mlp/up_proj/MatMul_Q8", "model.layers.0.mlp.up_proj", n_up, "A", "H"),
                                  ("/lm_head/MatMul_Q8", "lm_head", n_head, "H", "logits")):
        k = K if x == "A" else n_up
        weight, scales = f"{prefix}.MatMul.weight_Q8", f"{prefix}.MatMul.weight_scales"
        nodes.append(helper.make_node("MatMulNBits", [x, weight, scales], [y], name=name, domain="com.microsoft",
                                      K=k, N=n, bits=8, block_size=32, accuracy_level=4))
        inits += [numpy_helper.from_array(np.full((n, k // 32, 32), 128, np.uint8), weight),
                  numpy_helper.from_array(np.ones((n, k // 32), np.float32), scales)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, K])],
                              [helper.make_tensor_value_info("H", TensorProto.FLOAT, [None, n_up]),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, n_head])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])


class FakeGGUF:
    """Stands in for GGUFWeights: GGUF tensor name -> Blocks."""

    def __init__(self, blocks: dict[str, gw.Blocks]):
        self.tensors = blocks

    def node_blocks(self, node_name: str, sources) -> gw.Blocks:
        return gw.Blocks.stack([self.tensors[s.gguf] for s in sources], node_name)


class FakeHF:
    """Stands in for HFWeights: the fp32 weight each source would load."""

    def __init__(self, matrices: dict[str, np.ndarray]):
        self.matrices = matrices

    def matrix(self, sources) -> np.ndarray:
        return np.concatenate([self.matrices[s.hf] for s in sources])


LAYOUT = gw.Layout(heads=1, kv_heads=1, gguf_names=frozenset({"token_embd.weight"}),
                   hf_names=frozenset({"model.embed_tokens.weight"}))


@pytest.fixture
def rewritten(tmp_path):
    """A builder-like folder (external data, a stale int8 weight included), rewritten to Q4_1 + Q8_0."""
    raw, up = random_q4_1(N_UP)
    q = rng.integers(-128, 128, (N_HEAD, N_UP))
    d8 = rng.uniform(0.01, 0.1, (N_HEAD, N_UP // 32)).astype(np.float16).astype(np.float32)
    head = gw.q8_0_blocks(q8_0_raw(q, d8))
    model = builder_like_model(N_UP, N_HEAD)
    onnx.save(model, str(tmp_path / gw.MODEL), save_as_external_data=True, all_tensors_to_one_file=True,
              location=gw.DATA, size_threshold=0)
    model = onnx.load(str(tmp_path / gw.MODEL), load_external_data=False)
    gguf = FakeGGUF({"blk.0.ffn_up.weight": gw.q4_1_blocks(raw), "token_embd.weight": head})
    kinds = gw.rewrite_graph(model.graph, gguf, LAYOUT)
    size = gw.save_model(model, tmp_path)
    weights = {"model.layers.0.mlp.up_proj.weight": gw.dequantize(up.codes, up.d, up.m),
               "model.embed_tokens.weight": gw.dequantize(head.codes, head.d, None)}
    return tmp_path, gguf, weights, kinds, size


def test_onnxruntime_runs_the_rewritten_blocks_as_d_q_plus_m(rewritten):
    folder, _, weights, kinds, _ = rewritten
    assert kinds == {"/model/layers.0/mlp/up_proj/MatMul_Q8": "Q4_1", "/lm_head/MatMul_Q8": "Q8_0"}
    model = onnx.load(str(folder / gw.MODEL), load_external_data=False)
    up, head = gw.matmul_nodes(model.graph)
    assert (up.name, gw._attrs(up)["bits"], len(up.input)) == ("/model/layers.0/mlp/up_proj/MatMul_Q4", 4, 4)
    assert (head.name, gw._attrs(head)["bits"], len(head.input)) == ("/lm_head/MatMul_Q8", 8, 3)
    assert gw._attrs(up)["accuracy_level"] == 4  # kept as the builder wrote it
    zp = next(t for t in model.graph.initializer if t.name == up.input[3])
    assert zp.data_type == TensorProto.FLOAT and list(zp.dims) == [N_UP, K // 32]
    x = rng.standard_normal((3, K)).astype(np.float32)
    session = ort.InferenceSession(str(folder / gw.MODEL), providers=["CPUExecutionProvider"])
    hidden = x.astype(np.float64) @ weights["model.layers.0.mlp.up_proj.weight"].T.astype(np.float64)
    got_hidden = session.run(["H"], {"A": x})[0]
    assert np.abs(got_hidden - hidden).max() <= 1e-5 * np.abs(hidden).max()  # float zero points: fp32 compute
    want = hidden @ weights["model.embed_tokens.weight"].T.astype(np.float64)
    logits = session.run(["logits"], {"A": x})[0]
    assert np.abs(logits - want).max() <= 0.02 * np.abs(want).max()  # the 8-bit head quantizes its input (level 4)


def test_the_data_file_holds_only_the_new_weights(rewritten):
    folder, _, _, _, size = rewritten
    model = onnx.load(str(folder / gw.MODEL), load_external_data=False)
    lengths = [int({e.key: e.value for e in t.external_data}["length"]) for t in model.graph.initializer]
    assert (folder / gw.DATA).stat().st_size == size == sum(lengths)
    assert sorted(t.name for t in model.graph.initializer) == sorted([
        "model.layers.0.mlp.up_proj.MatMul.weight_Q4", "model.layers.0.mlp.up_proj.MatMul.weight_scales",
        "model.layers.0.mlp.up_proj.MatMul.weight_zp", "lm_head.MatMul.weight_Q8", "lm_head.MatMul.weight_scales"])
    assert not list(folder.glob("*.partial"))


def test_verify_reads_the_folder_back_and_names_a_mismatch(rewritten):
    folder, gguf, weights, _, _ = rewritten
    check = gw.verify(folder, gguf, FakeHF(weights), LAYOUT)
    assert check.nodes == {4: 1, 8: 1} and 0 <= check.ulp_of_block <= 1
    off = dict(weights)
    off["model.layers.0.mlp.up_proj.weight"] = np.nextafter(off["model.layers.0.mlp.up_proj.weight"], np.float32(1))
    with pytest.raises(gw.WeightMismatch, match="up_proj/MatMul_Q4: de-quantized, it differs"):
        gw.verify(folder, gguf, FakeHF(off), LAYOUT)
