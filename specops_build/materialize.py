"""Give every node of a shape model its own weights, so the file is as large as the real model's.

The shape models repeat one layer's nodes to full depth and share that layer's initializers
(specops_build.shape_models), which is enough to time a pass but says nothing about memory:
the file is a fraction of the real one, the page cache holds one copy, and onnxruntime's
prepack, which keys blobs by content, packs 11 initializers instead of 161. Here every
initializer of at least `MIN_ELEMENTS` that more than one node reads gets one copy per extra
reader, its bytes rolled by a random offset (codes keep their distribution) and float tensors
scaled by 1 + 1% noise (scales and norms keep their magnitude): distinct content, same shapes,
same dtypes. Logits stay noise; never serve these.

A MatMul whose fp32 weight several nodes read (onnxruntime's MatMulNBitsQuantizer leaves those
alone) becomes a MatMulNBits like the graph's others (symmetric int4, onnxruntime's own block
quantizer), each reader with its own copy of the codes.

The data is written one tensor at a time into one external file beside the model (memory stays
at the largest tensor, not the model).
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

MIN_ELEMENTS = 1024  # smaller shared initializers are shape constants and stay shared
FLOATS = {1: np.float32, 10: np.float16}  # onnx.TensorProto.FLOAT, FLOAT16: jittered; others rolled as bytes


def _external(tensor) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _raw_bytes(tensor, folder: Path) -> bytes:
    """An initializer's stored bytes (external file, raw_data, or typed fields), as laid out on disk
    (int4 tensors stay packed two to a byte)."""
    from onnx import numpy_helper

    if tensor.data_location == 1:  # onnx.TensorProto.EXTERNAL
        ext = _external(tensor)
        with open(folder / ext["location"], "rb") as f:
            f.seek(int(ext.get("offset", 0)))
            return f.read(int(ext["length"]))
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return numpy_helper.to_array(tensor).tobytes()


def distinct_copy(raw: bytes, float_dtype, rng: np.random.Generator) -> bytes:
    """Same length and distribution, different bytes: rolled by a random offset (in elements for
    floats, which are also scaled by 1 + 1% noise; in bytes for codes)."""
    values = np.frombuffer(raw, dtype=float_dtype or np.uint8)
    out = np.roll(values, int(rng.integers(1, max(2, values.size))))
    if float_dtype is not None:
        out = (out * (1 + 0.01 * rng.standard_normal(out.size))).astype(float_dtype)
    return out.tobytes()


def fold_identities(graph) -> int:
    """Identity(initializer) -> the initializer itself (torch's export shares a tied weight through
    one Identity per reader, which hides the weight from the quantizer); returns how many."""
    inits = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs}
    for node in graph.node:
        node.input[:] = [alias.get(x, x) for x in node.input]
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    del graph.node[:]
    graph.node.extend(kept)
    return len(alias)


def quantize_shared_matmuls(graph, folder: Path, rng: np.random.Generator) -> int:
    """MatMul(x, W) with a 2-D fp32 weight W that several nodes read (onnxruntime's quantizer leaves
    those as they are) -> MatMulNBits with the attributes of the graph's other MatMulNBits
    (symmetric int4, onnxruntime's own block quantizer); returns how many nodes changed."""
    from onnx import helper, numpy_helper
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    like = next((n for n in graph.node if n.op_type == "MatMulNBits"), None)
    if like is None:
        return 0
    attrs = {a.name: helper.get_attribute_value(a) for a in like.attribute}
    block = attrs["block_size"]
    inits = {t.name: t for t in graph.initializer}
    readers = Counter(x for n in graph.node for x in n.input if x in inits)
    done: dict[str, tuple[str, str, int, int]] = {}
    count = 0
    for i, node in enumerate(list(graph.node)):
        w = node.input[1] if node.op_type == "MatMul" else None
        t = inits.get(w)
        if t is None or readers[w] < 2 or len(t.dims) != 2 or t.data_type != 1:
            continue
        if w not in done:
            k, n = t.dims
            weight = np.frombuffer(_raw_bytes(t, folder), np.float32).reshape(k, n)
            k_blocks = (k + block - 1) // block
            packed = np.zeros((n, k_blocks, block // 2), np.uint8)
            scales = np.zeros((n, k_blocks), np.float32)
            zp = np.zeros((n, (k_blocks + 1) // 2), np.uint8)
            quantize_matmul_4bits(packed, np.ascontiguousarray(weight), scales, zp, block, n, k, True)
            # torch's export may also hold the same values unshared (a first reader of its own,
            # quantized by onnxruntime): start these from different bytes
            packed = np.frombuffer(distinct_copy(packed.tobytes(), None, rng), np.uint8).reshape(packed.shape)
            scales = np.frombuffer(distinct_copy(scales.tobytes(), np.float32, rng), np.float32).reshape(scales.shape)
            graph.initializer.extend([numpy_helper.from_array(packed, w + ".shared_Q4"),
                                      numpy_helper.from_array(scales, w + ".shared_scales")])
            done[w] = (w + ".shared_Q4", w + ".shared_scales", k, n)
        q, sc, k, n = done[w]
        new = helper.make_node("MatMulNBits", [node.input[0], q, sc], list(node.output), name=node.name + "_Q4",
                               domain="com.microsoft", K=k, N=n, bits=4, block_size=block,
                               **({"accuracy_level": attrs["accuracy_level"]} if "accuracy_level" in attrs else {}))
        graph.node.remove(graph.node[i])
        graph.node.insert(i, new)
        count += 1
    return count


def materialize(model_file: Path, data_name: str | None = None, seed: int = 0, log=print) -> dict:
    """Rewrite `model_file` in place with one copy of each shared weight per reader, and all
    initializers in one external file `data_name` (default `<model file>.data`)."""
    import onnx

    folder = model_file.parent
    data_name = data_name or model_file.name + ".data"
    model = onnx.load(str(model_file), load_external_data=False)
    graph = model.graph
    rng = np.random.default_rng(seed)
    fold_identities(graph)
    converted = quantize_shared_matmuls(graph, folder, rng)
    inits = {t.name: t for t in graph.initializer}
    readers = Counter(x for n in graph.node for x in n.input if x in inits)
    copies = []  # (new name, source initializer)
    seen: Counter = Counter()
    for node in graph.node:
        for k, name in enumerate(node.input):
            t = inits.get(name)
            if t is None or readers[name] < 2 or int(np.prod(t.dims)) < MIN_ELEMENTS:
                continue
            seen[name] += 1
            if seen[name] > 1:  # the first reader keeps the original
                node.input[k] = f"{name}.copy{seen[name] - 1}"
                copies.append((node.input[k], t))
    used = {x for n in graph.node for x in n.input}
    tmp = folder / (data_name + ".tmp")
    out_tensors = []
    with open(tmp, "wb") as f:
        for name, src in [(t.name, t) for t in graph.initializer if t.name in used] + copies:
            data = _raw_bytes(src, folder)
            if name != src.name:
                data = distinct_copy(data, FLOATS.get(src.data_type), rng)
            tensor = onnx.TensorProto()
            tensor.CopyFrom(src)
            tensor.name = name
            tensor.ClearField("raw_data")
            for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "external_data"):
                tensor.ClearField(field)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            offset = f.tell()
            f.write(data)
            f.write(b"\0" * (-len(data) % 64))  # aligned, as onnx's own writer does for mapping
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(data)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            out_tensors.append(tensor)
    old_files = {_external(t)["location"] for t in graph.initializer if t.data_location == 1}
    del graph.initializer[:]
    graph.initializer.extend(out_tensors)
    onnx.save(model, str(model_file))
    for name in old_files - {data_name}:
        (folder / name).unlink(missing_ok=True)
    os.replace(tmp, folder / data_name)
    size = (folder / data_name).stat().st_size
    log(f"{model_file.name}: {converted} shared MatMul weights quantized, {len(copies)} weight copies, "
        f"{len(out_tensors)} initializers, {size / 2**20:.0f} MiB of data")
    return {"converted": converted, "copies": len(copies), "initializers": len(out_tensors), "data_bytes": size}
