"""In-memory rewrites of a builder graph before onnxruntime opens it (the folder is untouched).

`for_batching`, first: GroupQueryAttention refuses a batch of several sequences that each bring
more than one new token on top of a cache ("batch_size must be 1 when sequence_length > 1 and
past context is given") unless it is told how many of each row's tokens are real: its optional
`query_seqlens` input (onnxruntime >= 1.2x; index 16). The builder leaves it unconnected; wired
to a graph input, one pass verifies every sequence's proposals, each row padded to the longest.
Rows computed this way are bit for bit what the same sequence's own pass of as many tokens
gives (checked by tests/test_batch.py).

`logits_to_keep`: the LM head (49152 x 576 on SmolLM2, a fifth of the weights) runs on the last
`logits_to_keep` positions of each row only; a prompt needs one row of logits, not one per token.

`tile_matmuls`: every MatMulNBits the tiled kernel runs (4 or 8 bits, block 32; no zero points or
float ones, as `specops prepare` writes the GGUF's Q4_1 blocks; no bias or group index) becomes a
specops.QMatMul on copies of its weights in the kernel's layout (runtime/kernels.py), whatever the
node's accuracy level: the kernel computes at the precision the graph input `kernel_precision`
names on each run (0 fp32, 1 bf16, 2 int8, 7 int8x3 activations: kernel_paths.PRECISION_CODES).
The copies are written once per model file into the kernel cache (one
tensor at a time, from the mapped originals) and mapped from there; onnxruntime copies them into
its own memory when the session is created (add_external_initializers: measured, the session
grows by the tiles' size), after which `Tiles.release` drops the mapped pages from the process:
resident once, as the stock kernels' prepacked copy is.

`split_minimums`: where onnxruntime's own kernels run a GGUF-form folder, its float-zero-point
matmuls become a form they run fast, with the same values (see there).
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .kernels import BLOCK, TILE, block_minimums, tile_weights
from .model_folder import ModelFolderError

QUERY_SEQLENS = "query_seqlens"
LOGITS_TO_KEEP = "logits_to_keep"
KERNEL_PRECISION = "kernel_precision"
_QUERY_SEQLENS_INDEX = 16


def load(model_file: Path):
    """The graph of `model_file` without its external data (which stays where it is: open the
    rewritten graph with the model's folder set)."""
    import onnx

    return onnx.load(str(model_file), load_external_data=False)


def for_batching(model, logits: str = "logits") -> None:
    """Rewrites `model` (an onnx ModelProto from `load`): every GroupQueryAttention's
    `query_seqlens` fed by a new int32 input [batch], and the node that writes `logits` fed the
    last `logits_to_keep` (int64 [1]) positions only."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    nodes = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    if not nodes:
        raise ValueError("no GroupQueryAttention node (not a builder export)")
    if QUERY_SEQLENS not in {i.name for i in graph.input}:
        graph.input.append(helper.make_tensor_value_info(QUERY_SEQLENS, TensorProto.INT32, ["batch_size"]))
    for node in nodes:
        inputs = list(node.input)[:_QUERY_SEQLENS_INDEX]
        inputs += [""] * (_QUERY_SEQLENS_INDEX - len(inputs)) + [QUERY_SEQLENS]
        del node.input[:]
        node.input.extend(inputs)
    head = next((n for n in graph.node if logits in n.output), None)
    if head is None:
        raise ValueError(f"no node writes {logits!r}")
    graph.input.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, [1]))
    hidden, kept = head.input[0], head.input[0] + "/kept"
    graph.initializer.extend([numpy_helper.from_array(np.array([np.iinfo(np.int64).max]), "/logits_to_keep/end"),
                              numpy_helper.from_array(np.array([1]), "/logits_to_keep/axis")])
    at = list(graph.node).index(head)
    graph.node.insert(at, helper.make_node("Neg", [LOGITS_TO_KEEP], ["/logits_to_keep/start"], name="/logits_to_keep/Neg"))
    graph.node.insert(at + 1, helper.make_node("Slice", [hidden, "/logits_to_keep/start", "/logits_to_keep/end",
                                                         "/logits_to_keep/axis"], [kept], name="/logits_to_keep/Slice"))
    head.input[0] = kept


TILED_OP, TILED_DOMAIN = "QMatMul", "specops"
TILED_LAYOUT = 3  # bump when tile_weights' layout changes: old cache entries are then ignored


def _tileable(node, attrs: dict, inits: dict) -> bool:
    """Codes, scales and (optionally) float zero points, all initializers; nothing else."""
    from onnx import TensorProto

    inputs = list(node.input)
    if not (node.op_type == "MatMulNBits" and node.domain == "com.microsoft" and len(inputs) in (3, 4)
            and all(i in inits for i in inputs[1:]) and attrs.get("bits") in (4, 8)
            and attrs.get("block_size") == BLOCK and attrs.get("K", 0) % BLOCK == 0 and attrs.get("N", 0) % TILE == 0):
        return False
    return len(inputs) == 3 or inits[inputs[3]].data_type == TensorProto.FLOAT  # uint8 zero points: stock


def split_minimums(model, folder: Path) -> bool:
    """For onnxruntime's own kernels: every MatMulNBits with float zero points (the GGUF's Q4_1
    blocks, weight = d * code + m) becomes one without (codes times d, at accuracy level 0: fp32
    activations) plus the minimums' share, sum over each block of the activations times m, as an
    fp32 MatMul [..., K/32] @ [K/32, N]. onnxruntime computes float zero points by de-quantizing
    every weight on every call (a SmolLM2 one-token pass: 262 ms); this form runs its packed
    kernels (15 ms) and gives the same values to fp32 rounding (SmolLM2's logits within 8e-5 of
    the tiled kernel's fp32 path). Its multi-token passes cost more (2 tokens: 20.6 ms against 11.3
    for one, `specops profile`). True when the graph changed."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if _tileable(node, attrs, inits) and len(node.input) == 4 and attrs["bits"] == 4:
            nodes.append((node, attrs))
    for node, attrs in nodes:
        n, k, base = attrs["N"], attrs["K"], node.name or node.output[0]
        d, zp = (_initializer_array(inits[i], folder) for i in node.input[2:4])
        mins = block_minimums(np.asarray(d).reshape(-1), np.asarray(zp).reshape(-1)).reshape(n, k // BLOCK)
        codes_out, sums, share = f"{base}/codes_d", f"{base}/block_sums", f"{base}/minimums_share"
        graph.initializer.extend([
            numpy_helper.from_array(np.zeros(n * ((k // BLOCK + 1) // 2), np.uint8), f"{base}/zero_points_0"),
            numpy_helper.from_array(np.array([0, 0, k // BLOCK, BLOCK], np.int64), f"{base}/block_shape"),
            numpy_helper.from_array(np.array([-1], np.int64), f"{base}/last_axis"),
            numpy_helper.from_array(np.ascontiguousarray(mins.T), f"{base}/minimums_t")])
        at = list(graph.node).index(node)
        a, out = node.input[0], node.output[0]
        new = [helper.make_node("MatMulNBits", [a, node.input[1], node.input[2], f"{base}/zero_points_0"], [codes_out],
                                name=f"{base}/codes", domain="com.microsoft", K=k, N=n, bits=4, block_size=BLOCK,
                                accuracy_level=0),
               helper.make_node("Reshape", [a, f"{base}/block_shape"], [f"{base}/blocks"], name=f"{base}/blocks"),
               helper.make_node("ReduceSum", [f"{base}/blocks", f"{base}/last_axis"], [sums], keepdims=0,
                                name=f"{base}/block_sums"),
               helper.make_node("MatMul", [sums, f"{base}/minimums_t"], [share], name=f"{base}/minimums"),
               helper.make_node("Add", [codes_out, share], [out], name=f"{base}/add")]
        graph.node.remove(node)
        for i, extra in enumerate(new):
            graph.node.insert(at + i, extra)
    if nodes:
        _head_on_the_table(graph, inits)
        used = {i for n in graph.node for i in n.input}
        keep = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return bool(nodes)


def _head_on_the_table(graph, inits: dict) -> None:
    """A GGUF-form folder's 8-bit LM head (the tied Q8_0 table) as an fp32 MatMul on the
    embedding table the Gather reads, which holds the same values de-quantized: onnxruntime's
    8-bit kernel would round the activations to int8 (accuracy level 4) or de-quantize every call
    (level 0: 110 ms a pass). onnxruntime folds the Transpose once at load (one more copy of the
    table, on the stock path only)."""
    from onnx import helper

    table = next((n.input[0] for n in graph.node if n.op_type == "Gather" and n.input[0] in inits
                  and len(inits[n.input[0]].dims) == 2), None)
    for node in list(graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (table is None or node.op_type != "MatMulNBits" or attrs.get("bits") != 8
                or list(inits[table].dims) != [attrs["N"], attrs["K"]]):
            continue
        at = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(at, helper.make_node("Transpose", [table], [f"{table}/t"], name=f"{node.name}/table_t"))
        graph.node.insert(at + 1, helper.make_node("MatMul", [node.input[0], f"{table}/t"], list(node.output),
                                                   name=f"{node.name}/fp32"))


def _initializer_array(tensor, folder: Path) -> np.ndarray:
    """An initializer's data, mapped from its external file when it has one (read-only)."""
    from onnx import helper, numpy_helper

    if tensor.data_location != tensor.EXTERNAL:
        return numpy_helper.to_array(tensor)
    info = {e.key: e.value for e in tensor.external_data}
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    path, offset, shape = folder / info["location"], int(info.get("offset", 0)), tuple(tensor.dims)
    end = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = path.stat().st_size if path.is_file() else None
    if size is None or size < end:
        raise ModelFolderError(f"{path}: " + ("missing" if size is None else f"truncated ({size} bytes; the "
                               f"weight {tensor.name!r} ends at byte {end})"))
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _cache_key(model_file: Path) -> str:
    parts = [str(model_file.resolve()), str(TILED_LAYOUT)]
    for p in sorted(model_file.parent.glob(model_file.name + "*")):
        st = p.stat()
        parts += [p.name, str(st.st_size), str(st.st_mtime_ns)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


@dataclass
class Tiles:
    """The tiled weights a rewritten graph needs: `arrays` (name -> view of the mapped cache
    file) go to SessionOptions.add_external_initializers."""
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    _map: np.memmap | None = None

    def release(self) -> None:
        """Drop the mapped pages from the process once the session holds its copy (clean file
        pages: a later read would fault them back in from the cache file)."""
        if self._map is not None and getattr(self._map, "_mmap", None) is not None:
            self._map._mmap.madvise(mmap.MADV_DONTNEED)


def tile_matmuls(model, model_file: Path, cache: Path) -> Tiles:
    """Rewrites `model` (from `load(model_file)`) to run its tileable MatMulNBits on the tiled
    kernel; returns the tiled weights the session must be given. Nothing to tile: no arrays."""
    from onnx import TensorProto, helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    todo = []
    for i, node in enumerate(graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if _tileable(node, attrs, inits):
            node.name = node.name or f"/specops/matmul_{i}"
            todo.append((node, attrs))
    if not todo:
        return Tiles()
    entry = cache / "tiled" / _cache_key(model_file)
    index = _read_index(entry)
    if index is None:  # first use of this model file, or an entry damaged since
        _write_tiles(todo, inits, model_file, entry)
        index = _read_index(entry)
    data = np.memmap(entry / "weights.bin", dtype=np.uint8, mode="r")
    arrays = {name: data[off:off + np.prod(shape, dtype=np.int64) * np.dtype(dt).itemsize].view(dt).reshape(shape)
              for name, (off, shape, dt) in index.items()}
    used = {}
    for node, attrs in todo:
        names = _tiled_names(node)[:len(node.input) - 1]  # weights, scales (, minimums)
        used.update({name: arrays[name] for name in names})
        bits = attrs["bits"]
        tiled = helper.make_node(TILED_OP, [node.input[0], names[0], names[1], KERNEL_PRECISION, *names[2:]],
                                 list(node.output), name=node.name + "/tiled", domain=TILED_DOMAIN, K=attrs["K"],
                                 N=attrs["N"], bits=bits, zero_point=8 if bits == 4 else 128,
                                 has_min=int(len(names) == 3))
        node.CopyFrom(tiled)
    if KERNEL_PRECISION not in {i.name for i in graph.input}:
        graph.input.append(helper.make_tensor_value_info(KERNEL_PRECISION, TensorProto.INT64, [1]))
    still_used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(keep + [_placeholder(name, a) for name, a in used.items()])
    if not any(o.domain == TILED_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(TILED_DOMAIN, 1))
    return Tiles(used, data)


def qmatmul_model(k: int, n: int, bits: int, tiles: dict[str, np.ndarray]):
    """A graph of one specops.QMatMul: A [M, K] and kernel_precision in, Y [M, N] out; `tiles`
    (weights, scales and optionally minimums, in that order) are handed to the session apart."""
    from onnx import TensorProto, helper

    names = list(tiles)
    node = helper.make_node(TILED_OP, ["A", names[0], names[1], KERNEL_PRECISION, *names[2:]], ["Y"],
                            domain=TILED_DOMAIN, K=k, N=n, bits=bits, zero_point=8 if bits == 4 else 128,
                            has_min=int(len(names) == 3))
    inputs = [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["m", k]),
              helper.make_tensor_value_info(KERNEL_PRECISION, TensorProto.INT64, [1])]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["m", n])]
    graph = helper.make_graph([node], "qmatmul", inputs, outputs, [_placeholder(name, a) for name, a in tiles.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(TILED_DOMAIN, 1)])


def _read_index(entry: Path) -> dict | None:
    """A cache entry's index (name -> offset, shape, dtype), or None when the entry is missing or
    its weights file is shorter than the index says."""
    try:
        index = json.loads((entry / "index.json").read_text())
        need = max(off + int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
                   for off, shape, dt in index.values())
        return index if (entry / "weights.bin").stat().st_size >= need else None
    except (OSError, ValueError):
        return None


def _tiled_names(node) -> tuple[str, str, str]:
    """Per node, not per initializer: nodes that share weights (the shape models' repeated
    layers) each read their own copy, as each of onnxruntime's kernels prepacks its own."""
    return f"{node.name}/tiled_weights", f"{node.name}/tiled_scales", f"{node.name}/tiled_minimums"


def _placeholder(name: str, array: np.ndarray):
    """An initializer entry whose data the session is handed separately."""
    from onnx import TensorProto, helper

    t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape,
                    data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "specops-tiled"), ("offset", "0"), ("length", str(array.nbytes))):
        t.external_data.add(key=key, value=value)
    return t


def _write_tiles(todo, inits, model_file: Path, entry: Path) -> None:
    """Tiles every node's weights into entry/weights.bin, one tensor at a time (the originals
    are mapped, so the process holds one tensor's copy at most), then publishes index.json."""
    folder = model_file.parent
    entry.mkdir(parents=True, exist_ok=True)
    tmp = entry / f"weights.bin.{os.getpid()}"
    index, offset = {}, 0
    try:
        with open(tmp, "wb") as f:
            for node, attrs in todo:
                codes, scales, *zero_points = (_initializer_array(inits[i], folder) for i in node.input[1:])
                tiles = tile_weights(codes, scales, attrs["N"], attrs["K"], attrs["bits"], *zero_points)
                for name, array in zip(_tiled_names(node), tiles):
                    pad = -offset % 64
                    f.write(b"\0" * pad)
                    offset += pad
                    index[name] = (offset, list(array.shape), array.dtype.str)
                    array.tofile(f)
                    offset += array.nbytes
                del codes, scales, zero_points, tiles
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, entry / "weights.bin")
    source = str(model_file.resolve())
    for old in entry.parent.iterdir():  # tiles of an earlier version of this model file
        try:
            if old != entry and (old / "source.txt").read_text() == source:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    (entry / "source.txt").write_text(source)
    tmp_index = entry / f"index.json.{os.getpid()}"
    tmp_index.write_text(json.dumps(index))
    os.replace(tmp_index, entry / "index.json")
