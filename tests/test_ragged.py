"""Ragged passes on specops.Attention: the operator against its numpy statement and against
onnxruntime's GroupQueryAttention, and a row's logits bit-identical in any company (alone, one
row or k rows, beside random other sequences, prompt chunks and joins). Each on every build of the
kernel library this CPU runs (`which`: the AVX-512 build and the portable one, which AVX2 runs)."""
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from specops.engine.batch import Sequence
from specops.engine.sampling_params import SamplingParams
from specops.loader import load_batch_engine
from specops.runtime import kernels
from specops.runtime.batch_decoder import BatchDecoder
from specops.runtime.decoder import SessionConfig
from specops.runtime.model_folder import read_model_folder
from specops.runtime.ragged import blocked_keys, reference_attention, unblocked_keys


def _libraries() -> tuple[dict[str, str], list[str]]:
    """build -> its library, for the builds this machine runs; and why the others do not."""
    found, why = {}, []
    for which in kernels.BUILDS:
        try:
            found[which] = str(kernels.library(kernels.default_cache_dir(), which))
        except kernels.KernelUnavailable as err:  # no compiler, or a CPU without the build's instructions
            why.append(str(err))
    return found, why


LIBRARIES, WHY_NOT = _libraries()
if not LIBRARIES:  # the stock path serves
    pytestmark = pytest.mark.skip(reason=f"specops' kernel library cannot run here: {'; '.join(WHY_NOT)}")
builds = pytest.mark.parametrize("which", list(LIBRARIES))


def _rotary(positions: int, d: int):
    angles = np.arange(positions)[:, None] / (10000 ** (np.arange(0, d, 2) / d))[None]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _graph(op: str, domain: str, inputs, attrs: dict, library: str | None = None):
    from onnx import TensorProto, helper

    types = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32}
    node = helper.make_node(op, [name for name, _ in inputs], ["out", "k_out", "v_out"], domain=domain, **attrs)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info(name, types[a.dtype],
                                                                         [f"{name}{i}" for i in range(a.ndim)])
                                           if a is not None else helper.make_tensor_value_info(name, 6, [])
                                           for name, a in inputs if name],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("out", "k_out", "v_out")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    if domain == "specops":
        so.register_custom_ops_library(library)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


class Operator:
    """One specops.Attention on caches it owns (bound in place, as the decoder binds them)."""

    def __init__(self, which, heads, kv_heads, d, slots, capacity, positions=None):
        self.library, self.h, self.kvh, self.d = LIBRARIES[which], heads, kv_heads, d
        self.k = np.zeros((slots, kv_heads, capacity, d), np.float32)
        self.v = np.zeros_like(self.k)
        self.cos, self.sin = _rotary(positions or capacity, d)
        self.session = None

    def __call__(self, qkv, slots, positions):
        feeds = {"qkv": qkv[None], "kc": self.k, "vc": self.v, "slot": np.asarray(slots, np.int32),
                 "pos": np.asarray(positions, np.int32), "cos": self.cos, "sin": self.sin}
        if self.session is None:
            self.session = _graph("Attention", "specops", list(feeds.items()),
                                  dict(num_heads=self.h, kv_num_heads=self.kvh, scale=0.0), self.library)
        io = self.session.io_binding()
        io.bind_output("out")
        for name, a in feeds.items():
            if name in ("kc", "vc"):
                value = ort.OrtValue.ortvalue_from_numpy(a)
                io.bind_ortvalue_input(name, value)
                io.bind_ortvalue_output(name[0] + "_out", value)
            else:
                io.bind_cpu_input(name, a)
        self.session.run_with_iobinding(io)
        return io.get_outputs()[0].numpy()[0]


@builds
@pytest.mark.parametrize("heads,kv_heads,d", [(9, 3, 64), (4, 4, 96), (8, 1, 32), (32, 4, 64)])
def test_operator_computes_its_reference(which, heads, kv_heads, d):
    rng = np.random.default_rng(heads * d)
    op = Operator(which, heads, kv_heads, d, slots=3, capacity=96)
    width = (heads + 2 * kv_heads) * d
    keys, values = np.zeros((3, kv_heads, 96, d)), np.zeros((3, kv_heads, 96, d))
    passes = [([1] * 37, list(range(37))),  # a prompt
              ([0] * 5 + [1, 2, 2, 2] + [0] * 3, [0, 1, 2, 3, 4, 37, 0, 1, 2, 5, 6, 7])]  # ragged, chunked, joins
    for slots, positions in passes:
        qkv = rng.standard_normal((len(slots), width)).astype(np.float32)
        got = op(qkv, slots, positions)
        want = reference_attention(qkv, keys, values, slots, positions, op.cos, op.sin, heads, kv_heads)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(unblocked_keys(op.k), keys, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(op.v, values.astype(np.float32))
    assert np.array_equal(blocked_keys(unblocked_keys(op.k)), op.k)


@builds
@pytest.mark.parametrize("past", [0, 300, 8188])
def test_operator_matches_onnxruntime_gqa(which, past):
    """Against GroupQueryAttention on the same rotated past (our cache, unblocked), 4 new rows."""
    heads, kv_heads, d, new = 9, 3, 64, 4
    rng = np.random.default_rng(past)
    op = Operator(which, heads, kv_heads, d, slots=2, capacity=8192)
    width = (heads + 2 * kv_heads) * d
    for begin in range(0, past, 2048):  # the past, in chunks (slot 1)
        rows = min(2048, past - begin)
        op(rng.standard_normal((rows, width)).astype(np.float32), [1] * rows, range(begin, begin + rows))
    qkv = rng.standard_normal((new, width)).astype(np.float32)
    pk, pv = unblocked_keys(op.k)[1:2, :, :past].copy(), op.v[1:2, :, :past].copy()
    got = op(qkv, [1] * new, range(past, past + new))
    gqa = _graph("GroupQueryAttention", "com.microsoft",
                 [("qkv", qkv[None]), ("", None), ("", None), ("pk", pk), ("pv", pv),
                  ("seqlens", np.array([past + new - 1], np.int32)), ("total", None), ("cos", op.cos), ("sin", op.sin)],
                 dict(num_heads=heads, kv_num_heads=kv_heads, do_rotary=1, rotary_interleaved=0))
    want, _, _ = gqa.run(None, {"qkv": qkv[None], "pk": pk, "pv": pv, "seqlens": np.array([past + new - 1], np.int32),
                                "total": np.array(past + new, np.int32), "cos": op.cos, "sin": op.sin})
    np.testing.assert_allclose(got, want[0], rtol=1e-5, atol=1e-5 * np.abs(want).max())


# -- the target's rows in any company (the committed small target) ------------------------------
@pytest.fixture(scope="module", params=list(LIBRARIES))
def ragged(target_folder, request):
    batch = BatchDecoder(read_model_folder(target_folder, verify=False),
                         SessionConfig(kernel="tiled", precision="fp32", kernel_build=request.param),
                         max_batch=4, capacity=256)
    assert batch.ragged and batch.build == request.param, batch.attention_note
    assert batch.kernel_path == ("fp32-portable" if request.param == "portable" else "fp32")
    return batch


def _alone(batch, prompt, tokens):
    """A sequence's logits for `tokens` after `prompt`, one-row passes in slot 0, alone."""
    batch.lengths[:] = 0
    batch.prefill(0, prompt)
    return np.concatenate([batch.run([0], [[t]], [1])[0] for t in tokens])


@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), chunk=st.integers(1, 9), slot=st.integers(0, 3))
def test_a_rows_logits_are_the_same_in_any_company(ragged, seed, chunk, slot):
    rng = np.random.default_rng(seed)
    prompt, tokens = rng.integers(3, 30000, 23).tolist(), rng.integers(3, 30000, 9).tolist()
    want = _alone(ragged, prompt, tokens)
    ragged.lengths[:] = 0
    others = [s for s in range(4) if s != slot]
    for s in others:  # companions at random lengths
        ragged.prefill(s, rng.integers(3, 30000, int(rng.integers(1, 40))).tolist())
    ragged.prefill(slot, prompt)
    got, done = [], 0
    while done < len(tokens):  # the sequence's tokens in chunks, companions' random rows around it
        mine = tokens[done:done + chunk]
        company = [s for s in others if rng.random() < 0.7]
        rows = {s: rng.integers(3, 30000, int(rng.integers(1, 6))).tolist() for s in company}
        rows[slot] = mine
        order = list(rng.permutation(list(rows)))
        out = ragged.run(order, [rows[s] for s in order], [len(rows[s]) if rng.random() < 0.5 or s == slot else 0
                                                          for s in order])
        got.append(out[order.index(slot)].copy())
        for s in company:
            ragged.rewind(s, max(0, int(ragged.lengths[s]) - int(rng.integers(0, 3))))  # rejected proposals
        done += len(mine)
    assert np.array_equal(np.concatenate(got), want)


def test_one_row_steps_and_prompt_chunks_read_the_same_cache(ragged):
    prompt = list(range(100, 160))
    ragged.lengths[:] = 0
    whole = ragged.run([2], [prompt], [len(prompt)])[0].copy()
    ragged.lengths[:] = 0
    parts = [ragged.run([2], [prompt[i:i + 13]], [len(prompt[i:i + 13])])[0].copy() for i in range(0, 60, 13)]
    assert np.array_equal(np.concatenate(parts), whole)


def test_bad_ragged_passes_are_refused(ragged):
    ragged.lengths[:] = 0
    with pytest.raises(ValueError):
        ragged.run([0, 0], [[1], [2]], [1, 1])  # one slot twice
    with pytest.raises(ValueError):
        ragged.run([0], [[1, 2]], [3])  # more logits than tokens
    ragged.lengths[1] = 255
    with pytest.raises(OverflowError):
        ragged.run([1], [[1, 2]], [1])


# -- the engine: prompts read in chunks beside decoding rows --------------------------------------
@pytest.fixture(scope="module", params=list(LIBRARIES))
def ragged_engine(settings, request):
    engine = load_batch_engine(settings.model_copy(update={"max_batch": 3, "kernel": "tiled",
                                                           "kernel_build": request.param}), calibrate=False)
    assert engine.target.ragged and engine.target.build == request.param
    if request.param == "portable":  # auto serves fp32 there, on the portable path
        assert engine.target.precision == "fp32" and engine.target.kernel_path == "fp32-portable"
    return engine


@pytest.mark.parametrize("speculator", ["none", "ngram", "draft"])
def test_prompts_chunked_beside_decoding_rows_give_each_output_alone(ragged_engine, speculator):
    from conftest import load_prompts, prompt_ids

    tok = ragged_engine.tokenizer
    prompts = [prompt_ids(p, tok) for p in load_prompts("copy")[:2] + load_prompts("free")[:2]]
    params = SamplingParams(max_new_tokens=24, temperature=0.0, speculator=speculator, adaptive_k=False, k_draft=3)
    alone = [ragged_engine.generate(p, params).token_ids for p in prompts]
    ragged_engine.budget.chunk, ragged_engine.budget.floor = 7, 3  # force many small chunks
    shared = []
    seen = []
    try:
        sequences = [Sequence(p, params) for p in prompts]
        waiting, rounds = list(sequences), 0
        while waiting or ragged_engine.active:
            while waiting and ragged_engine.free and rounds >= 2 * (len(sequences) - len(waiting)):
                ragged_engine.add(waiting.pop(0))
            ragged_engine.step()
            seen.append(ragged_engine.last_pass)
            rounds += 1
        shared = [s.result.token_ids for s in sequences]
    finally:
        ragged_engine.budget.chunk, ragged_engine.budget.floor = 512, 16
    assert shared == alone
    assert any(rows and prompt for _, rows, prompt in seen), "no pass carried prompt tokens beside decoding rows"


def test_speculative_greedy_is_the_targets_own_bit_for_bit(ragged_engine):
    """On ragged passes a verify row computes as a one-row step does (either build): every
    speculator's greedy output is target-only greedy output exactly, with no near-tie to excuse."""
    from conftest import load_prompts, prompt_ids

    prompts = [prompt_ids(p, ragged_engine.tokenizer) for p in load_prompts("copy")[2:4] + load_prompts("free")[2:4]]
    plain = SamplingParams(max_new_tokens=32, temperature=0.0, speculator="none")
    want = [ragged_engine.generate(p, plain).token_ids for p in prompts]
    for speculator in ("ngram", "draft"):
        params = SamplingParams(max_new_tokens=32, temperature=0.0, speculator=speculator, adaptive_k=False, k_draft=4)
        assert [ragged_engine.generate(p, params).token_ids for p in prompts] == want, speculator
