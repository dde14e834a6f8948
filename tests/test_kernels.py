"""specops' tiled matmul kernel (specops/kernels/qmatmul.c) against onnxruntime's own MatMulNBits,
its build and its fallback.

The kernel computes what MLAS's accuracy level 4 computes (int8 activations per block of 32),
in another order of fp32 additions; a row's result never depends on the rows beside it."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from specops.config import Settings
from specops.loader import engine_target, kernel_cache, resolve_kernel, target_config
from specops.runtime import kernel_paths as paths
from specops.runtime import kernels
from specops.runtime.batch_decoder import BatchDecoder
from specops.runtime.decoder import Decoder, SessionConfig
from specops.runtime.model_folder import ModelFolderError, read_model_folder

TARGET = "models/target"  # Phi-3's format: int4 MatMulNBits, block 32, GroupQueryAttention


def _cpu_runs_it() -> bool:
    try:
        kernels.library()
        return True
    except kernels.KernelUnavailable:
        return False


needs_kernel = pytest.mark.skipif(not _cpu_runs_it(), reason="the tiled kernel does not run here (see /health)")


def _stock(packed, scales, n: int, k: int, bits: int) -> ort.InferenceSession:
    """onnxruntime's own MatMulNBits (accuracy level 4: int8 activations) on the same weights."""
    a = helper.make_tensor_value_info("A", TensorProto.FLOAT, ["b", "s", k])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["b", "s", n])
    stock = helper.make_model(helper.make_graph(
        [helper.make_node("MatMulNBits", ["A", "B", "S"], ["Y"], domain="com.microsoft", K=k, N=n, bits=bits,
                          block_size=32, accuracy_level=4)], "stock", [a], [y],
        [numpy_helper.from_array(packed, "B"), numpy_helper.from_array(scales, "S")]),
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    return ort.InferenceSession(stock.SerializeToString(), providers=["CPUExecutionProvider"])


def _weights(n: int, k: int, bits: int, rng, q41: bool = False):
    """Random codes [N, K/32, 32*bits/8], fp16-born scales and (Q4_1) float zero points -m/d."""
    packed = rng.integers(0, 256, (n, k // 32, 32 * bits // 8), dtype=np.uint8)
    scales = (rng.random(n * k // 32, dtype=np.float32) * 0.02 + 1e-3).astype(np.float16).astype(np.float32)
    if not q41:
        return packed, scales, None
    mins = (-rng.random(n * k // 32, dtype=np.float32) * 0.15).astype(np.float16).astype(np.float32)
    return packed, scales, (-mins / scales).astype(np.float32)


def _rows(rng, rows: int, k: int) -> np.ndarray:
    x = (rng.standard_normal((rows, k)) * rng.choice([0.1, 1, 30], size=(rows, 1))).astype(np.float32)
    x[0, :32] = 0  # an all-zero block: scale 0
    return x


def _build(path: str) -> str:
    """The library build to run a path on: the portable one for its path, else the one this CPU runs."""
    return "portable" if path in paths.PORTABLE_PATHS else "auto"


def _runs(path: str):
    try:
        why = paths.path_report(None, _build(path))[path]
    except kernels.KernelUnavailable as err:
        why = str(err)
    if why:
        pytest.skip(f"{path}: {why}")


@needs_kernel
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("n,k", [(16, 32), (960, 576), (3072, 1024)])
def test_int8_precision_matches_stock_matmulnbits_and_rows_are_independent(bits, n, k):
    _runs("int8-vnni")
    rng = np.random.default_rng(bits * 1000 + n)
    packed, scales, _ = _weights(n, k, bits, rng)
    stock, tiled = _stock(packed, scales, n, k, bits), paths.matmul_session(packed, scales, n, k, bits)
    for rows in (1, 2, 3, 5, 9, 12, 13, 40):
        x = _rows(rng, rows, k)
        want, got = stock.run(None, {"A": x[None]})[0][0], paths.run_matmul(tiled, x, "int8")
        assert got.shape == want.shape == (rows, n)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * float(np.abs(want).max()))
        alone = np.concatenate([paths.run_matmul(tiled, x[i:i + 1], "int8") for i in range(rows)])
        assert np.array_equal(alone, got), f"{rows} rows: a row's result depends on the rows beside it"


@pytest.mark.parametrize("path", list(paths.PATHS))
@pytest.mark.parametrize("n,k,bits,q41", [(16, 32, 4, True), (960, 576, 4, True), (576, 1536, 4, True),
                                          (96, 64, 4, False), (160, 576, 8, False), (3072, 1024, 4, False)])
def test_every_path_computes_the_reference_and_rows_are_independent(path, n, k, bits, q41):
    """Each path (those this CPU lacks skip, naming why; fp32-portable on the portable build, which
    AVX2 runs) against kernels.reference_matmul (numpy, float64 sums) of the same math: Q4_1 with its
    minimum, symmetric 4 and 8 bits; a row's result is the same alone, in any group, at any position
    of the pass; AMX-INT8 gives VNNI's bits."""
    _runs(path)
    precision = paths.precision_of(path)
    rng = np.random.default_rng(n + k + bits)
    packed, scales, zp = _weights(n, k, bits, rng, q41)
    session = paths.matmul_session(packed, scales, n, k, bits, zp, which=_build(path))
    for rows in (1, 4, 7, 13, 29, 53):  # 29: a prompt chunk's many rows (fp32's unpacked-tile form); 53: two row blocks
        x = _rows(rng, rows, k)
        got = paths.run_matmul(session, x, path)
        want = kernels.reference_matmul(x, packed, scales, n, k, bits, zp, precision)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * float(np.abs(want).max()))
        for i in range(rows):
            assert np.array_equal(paths.run_matmul(session, x[i:i + 1], path), got[i:i + 1])
        if rows > 2:
            assert np.array_equal(paths.run_matmul(session, x[1:rows - 1], path), got[1:rows - 1])
            assert np.array_equal(paths.run_matmul(session, x[rows // 2:], path), got[rows // 2:])
        if path in ("int8-amx", "int8x3-amx"):
            assert np.array_equal(got, paths.run_matmul(session, x, path.replace("amx", "vnni")))


def test_the_reference_is_the_dequantized_model():
    """reference_matmul's fp32 weights are d * code + m as a Q4_1 block defines them; its bf16 and
    int8 variants move the activations only, by their rounding."""
    rng = np.random.default_rng(3)
    packed, d, zp = _weights(32, 64, 4, rng, q41=True)
    codes = kernels.unpack_codes(packed, 4).reshape(32, 64).astype(np.float64)
    m = np.repeat(kernels.block_minimums(d, zp).reshape(32, 2), 32, axis=1)
    w = np.repeat(d.reshape(32, 2), 32, axis=1) * codes + m
    x = rng.standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_allclose(kernels.reference_matmul(x, packed, d, 32, 64, 4, zp, "fp32"), x @ w.T, rtol=1e-6)
    for precision, tol in (("bf16", 2 ** -8), ("int8", 1 / 127)):
        y = kernels.reference_matmul(x, packed, d, 32, 64, 4, zp, precision)
        assert 0 < np.abs(y - x @ w.T).max() < 64 * tol * np.abs(x).max() * np.abs(w).max()


def test_block_minimums_give_the_fp16_minimum_back():
    """zp = -m/d written in fp32 from fp16 d and m: -zp*d, rounded to fp16, is m exactly."""
    rng = np.random.default_rng(4)
    d = (rng.random(10000) * 0.05 + 1e-4).astype(np.float16).astype(np.float32)
    m = (-rng.random(10000) * 0.3).astype(np.float16).astype(np.float32)
    assert np.array_equal(kernels.block_minimums(d, (-m / d).astype(np.float32)), m)
    other = np.float32([0.3337])  # not fp16-born: the fp32 product stays
    assert kernels.block_minimums(np.float32([0.01]), other)[0] == np.float32(-other[0] * np.float32(0.01))


def test_the_most_faithful_precision_within_ten_percent_is_chosen():
    assert paths.most_faithful_within({"fp32": 10.9, "bf16": 10.2, "int8": 10.0}) == "fp32"
    assert paths.most_faithful_within({"fp32": 11.2, "bf16": 10.2, "int8": 10.0}) == "bf16"
    assert paths.most_faithful_within({"fp32": 12.0, "bf16": 11.5, "int8": 10.0}) == "int8"
    assert paths.most_faithful_within({"fp32": 9.0, "int8": 10.0}) == "fp32"
    assert paths.most_faithful_within({"fp32": 12.0, "int8": 10.0}, slower=1.25) == "fp32"


@needs_kernel
def test_the_precision_is_timed_at_load_or_named():
    spec = read_model_folder(TARGET)
    auto = BatchDecoder(spec, SessionConfig(kernel="tiled"), 2, 128)
    assert set(auto.precision_ms) == set(paths.precisions()) & set(paths.FAITHFUL) and auto.lengths.sum() == 0
    assert auto.precision == paths.most_faithful_within(auto.precision_ms)
    ids = [[(7 * i) % 500 + 3 for i in range(12)]]
    logits = {}
    for precision in paths.precisions():
        named = BatchDecoder(spec, SessionConfig(kernel="tiled", precision=precision), 1, 128)
        assert named.precision == precision and named.precision_ms == {}
        logits[precision] = np.array(named.forward(ids)[0])
    fp32 = logits["fp32"]
    for precision, got in logits.items():
        assert np.abs(got - fp32).max() < 0.05 * np.abs(fp32).max(), precision
    stock = BatchDecoder(spec, SessionConfig(kernel="stock"), 1, 128)
    assert stock.precision is None


@needs_kernel
def test_auto_is_decided_once_per_process_for_a_model():
    """Two decoders of one model compute alike (a batch's rows equal a sequence's alone): the
    timing is not repeated, so noise cannot give them different precisions."""
    spec = read_model_folder(TARGET)
    a = BatchDecoder(spec, SessionConfig(kernel="tiled"), 1, 64)
    b = BatchDecoder(spec, SessionConfig(kernel="tiled"), 3, 96)
    assert a.precision == b.precision and a.precision_ms == b.precision_ms != {}


def test_a_precision_the_cpu_lacks_is_refused_naming_why(monkeypatch):
    if not _cpu_runs_it():
        pytest.skip("the tiled kernel does not run here")
    report = {"fp32": None, "bf16": "this CPU lacks AVX-512 BF16", "int8": None}
    monkeypatch.setattr("specops.runtime.batch_decoder.precision_report", lambda cache=None, which="auto": report)
    with pytest.raises(ModelFolderError, match="precision bf16 cannot run here: this CPU lacks AVX-512 BF16"):
        BatchDecoder(read_model_folder(TARGET), SessionConfig(kernel="tiled", precision="bf16"), 1, 64)


@needs_kernel
def test_every_path_passes_its_self_check_or_says_why():
    report = paths.path_report()
    assert report["fp32"] is None or report["fp32-portable"] is None  # wherever the kernel runs
    for path, why in report.items():
        assert why is None or why.startswith(("this CPU lacks", "not in the")), (path, why)
        if why is None:
            assert paths.self_check(path) is None
    served = paths.served_paths()
    assert served["fp32"] in ("fp32", "fp32-portable") and set(served) == set(paths.precisions())
    if "int8-amx" in paths.cpu_paths():
        assert served["int8"] == "int8-amx"  # AMX first where it runs


def test_tile_layout_holds_every_code_once():
    """The layout qmatmul.c reads (4 bits: chunk c, column j, byte i = k 8c+i | k 8c+4+i << 4)."""
    n, k = 32, 64
    codes = np.arange(n * k, dtype=np.int64).reshape(n, k) % 16
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8).reshape(n, k // 32, 16)
    w, s = kernels.tile_weights(packed, np.arange(n * k // 32, dtype=np.float32), n, k, 4)
    assert w.shape == (2, 2, 256) and s.shape == (2, 2, 16)
    t, kb, c, j, i = 1, 1, 2, 5, 3
    byte = w[t, kb, 64 * c + 4 * j + i]
    assert byte & 15 == codes[16 * t + j, 32 * kb + 8 * c + i]
    assert byte >> 4 == codes[16 * t + j, 32 * kb + 8 * c + 4 + i]
    assert s[t, kb, j] == (16 * t + j) * (k // 32) + kb
    w8, _ = kernels.tile_weights(codes.astype(np.uint8).reshape(n, k // 32, 32), s.ravel(), n, k, 8)
    assert w8[t, kb, 64 * 6 + 4 * j + i] == codes[16 * t + j, 32 * kb + 4 * 6 + i]


@needs_kernel
def test_the_target_runs_tiled_and_agrees_with_stock():
    spec = read_model_folder(TARGET)
    tiled = BatchDecoder(spec, SessionConfig(kernel="tiled"), 1, 256)
    stock = BatchDecoder(spec, SessionConfig(kernel="stock"), 1, 256)
    assert (tiled.kernel, tiled.kernel_note, stock.kernel) == ("tiled", None, "stock")
    ids = [[(7 * i) % 500 + 3 for i in range(20)]]
    a, b = np.array(tiled.forward(ids)[0]), np.array(stock.forward(ids)[0])
    assert a.shape == b.shape == (20, spec.vocab_size)
    assert np.abs(a - b).max() < 0.05 * np.abs(b).max()
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.9


@needs_kernel
def test_tiles_are_cached_per_model_file(tmp_path):
    spec = read_model_folder(TARGET)
    cfg = SessionConfig(kernel="tiled", kernel_cache=str(tmp_path))
    BatchDecoder(spec, cfg, 1, 64)
    [entry] = (tmp_path / "tiled").iterdir()
    index = json.loads((entry / "index.json").read_text())
    weights = [name for name in index if name.endswith("/tiled_weights")]
    graph = onnx.load(str(spec.model_file), load_external_data=False).graph
    assert len(weights) == sum(node.op_type == "MatMulNBits" for node in graph.node) > spec.num_layers
    assert len(index) == 2 * len(weights)
    stamp = (entry / "weights.bin").stat().st_mtime_ns
    BatchDecoder(spec, cfg, 1, 64)
    assert (entry / "weights.bin").stat().st_mtime_ns == stamp  # reused, not written again
    assert list((tmp_path / "tiled").iterdir()) == [entry]
    assert (tmp_path / kernels.library_name()).is_file()  # the library was built into the same cache
    with open(entry / "weights.bin", "r+b") as f:  # an entry cut short (a full disk, a crash): written again
        f.truncate(1000)
    again = BatchDecoder(spec, cfg, 1, 64)
    assert again.kernel == "tiled" and (entry / "weights.bin").stat().st_size > 1000


def test_without_a_compiler_auto_falls_back_and_tiled_refuses(monkeypatch, tmp_path):
    monkeypatch.setattr(kernels, "compiler", lambda: None)
    kernels.library.cache_clear()
    try:
        spec = read_model_folder(TARGET)
        assert resolve_kernel("auto", spec, tmp_path) == ("stock", "no C compiler (gcc, cc or clang) on PATH to "
                                                                   "build the tiled kernel")
        with pytest.raises(ModelFolderError, match="no C compiler"):
            resolve_kernel("tiled", spec, tmp_path)
        decoder = BatchDecoder(spec, SessionConfig(kernel="auto", kernel_cache=str(tmp_path)), 1, 64)
        assert decoder.kernel == "stock" and "no C compiler" in decoder.kernel_note
        assert resolve_kernel("stock", spec) == ("stock", None)
    finally:
        kernels.library.cache_clear()


def test_a_library_that_does_not_build_or_load_falls_back(monkeypatch, tmp_path):
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C\n")
    monkeypatch.setattr(kernels, "SOURCE", broken)
    cache = tmp_path / "cache"
    kernels.library.cache_clear()
    try:
        with pytest.raises(kernels.KernelUnavailable, match="failed"):
            kernels.library(cache)
        decoder = BatchDecoder(read_model_folder(TARGET), SessionConfig(kernel="auto", kernel_cache=str(cache)), 1, 64)
        assert decoder.kernel == "stock" and "building the tiled kernel" in decoder.kernel_note
    finally:
        kernels.library.cache_clear()
    # a library onnxruntime cannot register (here: not a shared object at all): the session falls back
    fake = tmp_path / "fake.so"
    fake.write_bytes(b"\0" * 64)
    monkeypatch.setattr("specops.runtime.batch_decoder.library", lambda cache=None, which="auto": fake)
    monkeypatch.setattr("specops.runtime.batch_decoder.resolve", lambda setting, folder, cache, which="auto": ("tiled", None))
    decoder = BatchDecoder(read_model_folder(TARGET), SessionConfig(kernel="auto"), 1, 64)
    assert decoder.kernel == "stock" and "onnxruntime cannot load" in decoder.kernel_note
    with pytest.raises(ModelFolderError, match="tiled kernel cannot run"):
        BatchDecoder(read_model_folder(TARGET), SessionConfig(kernel="tiled"), 1, 64)


def test_a_cache_that_cannot_be_written_falls_back(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    kernels.library.cache_clear()
    try:
        decoder = BatchDecoder(read_model_folder(TARGET), SessionConfig(kernel="auto", kernel_cache=str(blocked / "k")),
                               1, 64)
    finally:
        kernels.library.cache_clear()
    assert decoder.kernel == "stock" and str(blocked) in decoder.kernel_note


def test_auto_takes_the_portable_build_where_the_cpu_lacks_avx512(monkeypatch):
    """Where the AVX-512 build's library says the CPU lacks its instructions (simulated: this CPU
    has them), auto serves the portable build: fp32 on fp32-portable, ragged passes; where the
    portable one lacks them too, stock with both reasons; a build named in the setting is kept."""
    real = kernels._loaded
    lacking = {"avx512"}

    def loaded(directory, which):
        if which in lacking:
            raise kernels._CpuLacks(f"this CPU lacks {kernels.NEEDS[which]}, which the tiled kernel's {which} build needs")
        return real(directory, which)

    monkeypatch.setattr(kernels, "_loaded", loaded)
    spec = read_model_folder(TARGET)
    try:
        for cache in (kernels.library, paths.path_report):
            cache.cache_clear()
        if not _cpu_runs_it():
            pytest.skip("no build of the tiled kernel runs here")
        assert kernels.build_of(kernels.library()) == "portable"
        auto = BatchDecoder(spec, SessionConfig(kernel="auto"), 2, 64)
        assert (auto.kernel, auto.build, auto.precision, auto.kernel_path) == ("tiled", "portable", "fp32", "fp32-portable")
        assert auto.ragged and "portable build" in auto.attention
        assert paths.precision_report()["int8"].startswith("not in the portable build")
        with pytest.raises(ModelFolderError, match="lacks AVX-512"):
            BatchDecoder(spec, SessionConfig(kernel="tiled", kernel_build="avx512"), 1, 64)
        lacking.add("portable")
        kernels.library.cache_clear()
        kernel, why = resolve_kernel("auto", spec)
        assert kernel == "stock" and "AVX-512 (F, BW)" in why and "AVX2 and FMA" in why
    finally:
        for cache in (kernels.library, paths.path_report):
            cache.cache_clear()


def test_auto_reads_the_cpu_flags_before_building_a_library_the_cpu_cannot_run(monkeypatch):
    """On Linux the flags in /proc/cpuinfo rule a build out without compiling it (the AVX-512
    build took 17 s to compile just to say the CPU lacks AVX-512)."""
    asked = []
    real = kernels._loaded

    def loaded(directory, which):
        asked.append(which)
        return real(directory, which)

    monkeypatch.setattr(kernels, "_loaded", loaded)
    monkeypatch.setattr(kernels, "cpu_flags", lambda: frozenset({"avx2", "fma", "sse4_2"}))
    try:
        kernels.library.cache_clear()
        if not _cpu_runs_it():
            pytest.skip("no build of the tiled kernel runs here")
        asked.clear()
        kernels.library.cache_clear()
        assert kernels.build_of(kernels.library()) == "portable" and asked == ["portable"]
        monkeypatch.setattr(kernels, "cpu_flags", lambda: frozenset({"sse4_2"}))
        kernels.library.cache_clear()
        with pytest.raises(kernels.KernelUnavailable, match="no avx512f, avx512bw in /proc/cpuinfo.*no avx2, fma"):
            kernels.library()
    finally:
        kernels.library.cache_clear()


def test_other_layouts_and_prepacked_folders_stay_on_stock(tmp_path):
    draft = read_model_folder("models/draft")  # Optimum layout: concat cache, plain Decoder
    kernel, why = resolve_kernel("auto", draft)
    assert kernel == "stock" and "not a builder export" in why
    with pytest.raises(ModelFolderError):
        resolve_kernel("tiled", draft)
    folder = tmp_path / "prepacked"
    folder.mkdir()
    (folder / "prepacked.json").write_text("{}")
    kernel, why = kernels.resolve("auto", folder)
    assert kernel == "stock" and "prepacked" in why


@needs_kernel
def test_the_engine_target_follows_the_setting():
    spec = read_model_folder(TARGET)
    assert engine_target(Settings(target_model=TARGET, kernel="tiled"), spec).batch.kernel == "tiled"
    assert engine_target(Settings(target_model=TARGET, kernel="stock"), spec).batch.kernel == "stock"
    assert isinstance(engine_target(Settings(target_model="models/draft"), read_model_folder("models/draft")),
                      Decoder)


def test_the_kernel_cache_follows_the_settings(monkeypatch, tmp_path):
    assert kernel_cache(Settings(model_cache_dir=str(tmp_path))) == tmp_path / "kernels"
    assert kernel_cache(Settings(kernel_cache_dir=str(tmp_path / "k"))) == tmp_path / "k"
    assert target_config(Settings(model_cache_dir=str(tmp_path))).kernel_cache == str(tmp_path / "kernels")
    assert target_config(Settings()).kernel_build == "auto"
    monkeypatch.setenv("SPECOPS_KERNEL_BUILD", "portable")  # forces the portable build, e.g. to measure it
    assert target_config(Settings()).kernel_build == "portable"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert kernels.default_cache_dir() == tmp_path / "specops" / "kernels"


def test_the_library_builds_into_a_given_folder(tmp_path):
    if kernels.compiler() is None:
        pytest.skip("no C compiler here")
    built = kernels.build(tmp_path)
    assert built == tmp_path / kernels.library_name() and built.stat().st_size > 0
    assert list(tmp_path.iterdir()) == [built]  # no temporary files left


@needs_kernel
def test_a_server_whose_tiles_cannot_be_written_serves_on_stock_kernels(tmp_path):
    """`auto` falls back at load too, after the start-up check said the kernel runs: here the
    library is in the cache, but the tiles' folder cannot be made (a file is in its way)."""
    import shutil

    import httpx
    from server_harness import start_server

    cache = tmp_path / "kernels"
    cache.mkdir()
    shutil.copy(kernels.library(), cache / kernels.library_name())
    (cache / "tiled").write_text("in the way")
    server = start_server({"SPECOPS_TARGET_MODEL": TARGET, "SPECOPS_DRAFT_MODEL": "none",
                           "SPECOPS_KERNEL_CACHE_DIR": str(cache)})
    try:
        server.wait_ready(timeout=120)
        kernel = server.health().json()["models"]["kernel"]
        assert kernel["target"] == "stock" and "cannot write the tiled weights" in kernel["note"], kernel
        r = httpx.post(server.base_url + "/generate", json={"prompt": "def f(x):\n", "max_new_tokens": 8}, timeout=60)
        assert r.status_code == 200, r.text
    finally:
        assert server.stop() == 0
