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

`tile_matmuls`: every MatMulNBits the tiled kernel runs (4 or 8 bits, block 32, accuracy level 4,
no zero points, bias or group index) becomes a specops.QMatMul on copies of its weights in the kernel's layout
(runtime/kernels.py). The copies are written once per model file into the kernel cache (one
tensor at a time, from the mapped originals) and mapped from there; onnxruntime copies them into
its own memory when the session is created (add_external_initializers: measured, the session
grows by the tiles' size), after which `Tiles.release` drops the mapped pages from the process:
resident once, as the stock kernels' prepacked copy is.
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

from .kernels import BLOCK, TILE, tile_weights
from .model_folder import ModelFolderError

QUERY_SEQLENS = "query_seqlens"
LOGITS_TO_KEEP = "logits_to_keep"
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
TILED_LAYOUT = 2  # bump when tile_weights' layout changes: old cache entries are then ignored


def _tileable(node, attrs: dict) -> bool:
    inputs = [i for i in node.input if i]
    return (node.op_type == "MatMulNBits" and node.domain == "com.microsoft" and len(inputs) == 3
            and len(node.input) == 3 and attrs.get("bits") in (4, 8) and attrs.get("block_size") == BLOCK
            and attrs.get("accuracy_level") == 4  # int8 activations: the kernel's numerics
            and attrs.get("K", 0) % BLOCK == 0 and attrs.get("N", 0) % TILE == 0)


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
    from onnx import helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    todo = []
    for i, node in enumerate(graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if _tileable(node, attrs) and node.input[1] in inits and node.input[2] in inits:
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
        w, s = _tiled_names(node)
        used[w], used[s] = arrays[w], arrays[s]
        tiled = helper.make_node(TILED_OP, [node.input[0], w, s], list(node.output), name=node.name + "/tiled",
                                 domain=TILED_DOMAIN, K=attrs["K"], N=attrs["N"], bits=attrs["bits"])
        node.CopyFrom(tiled)
    still_used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(keep + [_placeholder(name, a) for name, a in used.items()])
    if not any(o.domain == TILED_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(TILED_DOMAIN, 1))
    return Tiles(used, data)


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


def _tiled_names(node) -> tuple[str, str]:
    """Per node, not per initializer: nodes that share weights (the shape models' repeated
    layers) each read their own copy, as each of onnxruntime's kernels prepacks its own."""
    return f"{node.name}/tiled_weights", f"{node.name}/tiled_scales"


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
                codes = _initializer_array(inits[node.input[1]], folder)
                scales = _initializer_array(inits[node.input[2]], folder)
                tiles = tile_weights(codes, scales, attrs["N"], attrs["K"], attrs["bits"])
                for name, array in zip(_tiled_names(node), tiles):
                    pad = -offset % 64
                    f.write(b"\0" * pad)
                    offset += pad
                    index[name] = (offset, list(array.shape), array.dtype.str)
                    array.tofile(f)
                    offset += array.nbytes
                del codes, scales, tiles
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
