"""The builder graph rewritten for ragged passes on specops' own attention operator.

A ragged pass runs any list of rows in one call: each row is a token of some sequence, tagged with
its sequence's cache slot (`row_slot`) and its position (`row_pos`); rows are concatenated, never
padded (`input_ids` [1, rows]). Every GroupQueryAttention becomes a specops.Attention
(specops/kernels/attention.c) on the same packed projection, the same rotary tables and the same
KV buffers, which it addresses by slot and writes in place; the attention-mask subgraph that fed
GQA its sequence lengths goes, and so does the `attention_mask` input. The LM head runs on the
rows `logits_rows` names only (a prompt chunk needs none of its rows' logits, a verify row all).

Every other node of the builder graph computes each row on its own (norms, matmuls on the tiled
kernel, activations), so a row's logits depend only on its own token and its sequence's cache:
the same alone, in a one-row or k-row pass, beside any other rows (tests/test_ragged.py).
"""
from __future__ import annotations

ROW_SLOT, ROW_POS, LOGITS_ROWS = "row_slot", "row_pos", "logits_rows"
ATTENTION_OP, ATTENTION_DOMAIN = "Attention", "specops"
KEY_BLOCK = 16  # positions per key block of the operator's cache layout: a capacity is a multiple of it

_GQA_INPUTS = 9  # query (packed), key, value, past_key, past_value, seqlens_k, total_sequence_length, cos, sin


def _attention_node(node, helper):
    """The specops.Attention standing in for one builder GroupQueryAttention, or ValueError
    naming what the operator does not compute (the caller then keeps onnxruntime's)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inputs = list(node.input) + [""] * max(0, _GQA_INPUTS - len(node.input))
    unsupported = {"do_rotary": attrs.get("do_rotary", 0) != 1, "rotary_interleaved": attrs.get("rotary_interleaved", 0) != 0,
                   "softcap": attrs.get("softcap", 0.0) != 0.0, "local_window_size": attrs.get("local_window_size", -1) != -1,
                   "separate key/value inputs": bool(inputs[1] or inputs[2]),
                   "cos/sin caches": not (inputs[7] and inputs[8]),
                   "extra inputs": any(list(node.input)[_GQA_INPUTS:])}
    found = [name for name, bad in unsupported.items() if bad]
    if found:
        raise ValueError(f"{node.name}: GroupQueryAttention with {', '.join(found)} (specops.Attention computes "
                         "rotary half-split attention on a packed projection only)")
    return helper.make_node(ATTENTION_OP, [inputs[0], inputs[3], inputs[4], ROW_SLOT, ROW_POS, inputs[7], inputs[8]],
                            list(node.output), name=(node.name or node.output[0]) + "/specops", domain=ATTENTION_DOMAIN,
                            num_heads=attrs["num_heads"], kv_num_heads=attrs["kv_num_heads"],
                            scale=float(attrs.get("scale", 0.0)))


def for_ragged(model, logits: str = "logits") -> None:
    """Rewrites `model` (an onnx ModelProto, graph.load) in place; ValueError when a GQA node is
    of a kind the operator does not compute (nothing changed then)."""
    from onnx import TensorProto, helper

    graph = model.graph
    nodes = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    if not nodes:
        raise ValueError("no GroupQueryAttention node (not a builder export)")
    replacements = [(n, _attention_node(n, helper)) for n in nodes]  # all checked before any change
    head = next((n for n in graph.node if logits in n.output), None)
    if head is None:
        raise ValueError(f"no node writes {logits!r}")
    for old, new in replacements:
        at = list(graph.node).index(old)
        graph.node.remove(old)
        graph.node.insert(at, new)
    graph.input.extend([helper.make_tensor_value_info(ROW_SLOT, TensorProto.INT32, ["rows"]),
                        helper.make_tensor_value_info(ROW_POS, TensorProto.INT32, ["rows"]),
                        helper.make_tensor_value_info(LOGITS_ROWS, TensorProto.INT64, ["kept_rows"])])
    hidden, kept = head.input[0], head.input[0] + "/kept_rows"
    at = list(graph.node).index(head)
    graph.node.insert(at, helper.make_node("Gather", [hidden, LOGITS_ROWS], [kept], name="/logits_rows/Gather", axis=1))
    head.input[0] = kept
    _drop_dead(graph)
    if not any(o.name == logits for o in graph.output):
        raise ValueError(f"{logits!r} is not a graph output")


def _drop_dead(graph) -> None:
    """Removes nodes nothing reads (the attention-mask subgraph), then unread inputs and initializers."""
    wanted = {o.name for o in graph.output}
    while True:
        read = wanted | {i for n in graph.node for i in n.input}
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = wanted | {i for n in graph.node for i in n.input}
    for kept, items in ((graph.input, list(graph.input)), (graph.initializer, list(graph.initializer))):
        del kept[:]
        kept.extend(x for x in items if x.name in read)


# the one-node graphs of attention_graph: inputs in each operator's order ("" = left out)
ATTENTION_INPUTS = {"specops": ["qkv", "key_cache", "value_cache", ROW_SLOT, ROW_POS, "cos", "sin"],
                    "onnxruntime": ["qkv", "", "", "key_cache", "value_cache", "seqlens_k", "total_sequence_length",
                                    "cos", "sin"]}


def attention_graph(which: str, heads: int, kv_heads: int) -> bytes:
    """One attention node as a model: specops.Attention, or the builder's GroupQueryAttention
    (rotary half-split, caches as past and present). Outputs: out, key_out, value_out (bind the
    caches' outputs to their inputs to write in place). For benchmarks and checks."""
    from onnx import TensorProto, helper

    names = ATTENTION_INPUTS[which]
    int32 = {ROW_SLOT, ROW_POS, "seqlens_k", "total_sequence_length"}
    ranks = {ROW_SLOT: 1, ROW_POS: 1, "seqlens_k": 1, "total_sequence_length": 0, "cos": 2, "sin": 2, "qkv": 3}
    if which == "specops":
        node = helper.make_node(ATTENTION_OP, names, ["out", "key_out", "value_out"], domain=ATTENTION_DOMAIN,
                                num_heads=heads, kv_num_heads=kv_heads, scale=0.0)
        domain = ATTENTION_DOMAIN
    else:
        node = helper.make_node("GroupQueryAttention", names, ["out", "key_out", "value_out"], domain="com.microsoft",
                                num_heads=heads, kv_num_heads=kv_heads, do_rotary=1, rotary_interleaved=0)
        domain = "com.microsoft"
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT32 if n in int32 else TensorProto.FLOAT,
                                            [f"{n}_{i}" for i in range(ranks.get(n, 4))]) for n in names if n]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("out", "key_out", "value_out")]
    graph = helper.make_graph([node], which, inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)])
    return model.SerializeToString()


def blocked_keys(keys):
    """[..., capacity, D] keys in the operator's layout (blocks of 16 positions, [D][16] each),
    as an array of the same shape; `unblocked_keys` undoes it."""
    *lead, cap, d = keys.shape
    return keys.reshape(*lead, cap // KEY_BLOCK, KEY_BLOCK, d).swapaxes(-1, -2).reshape(*lead, cap, d)


def unblocked_keys(cache):
    *lead, cap, d = cache.shape
    return cache.reshape(*lead, cap // KEY_BLOCK, d, KEY_BLOCK).swapaxes(-1, -2).reshape(*lead, cap, d)


def reference_attention(qkv, keys, values, slots, positions, cos, sin, heads: int, kv_heads: int,
                        scale: float | None = None):
    """What specops.Attention computes, in float64 numpy: qkv [rows, (H + 2 KVH) D]; keys, values
    [slots, KVH, capacity, D] in plain layout (updated in place with the rows' rotated keys and
    values); returns [rows, H D]. Each row attends to positions 0..its own of its slot."""
    import numpy as np

    rows, d = len(qkv), keys.shape[-1]
    half, group = d // 2, heads // kv_heads
    scale = scale or 1.0 / np.sqrt(d)

    def rotate(x, p):  # [n, D] at position p: half-split rotary
        c, s = cos[p].astype(np.float64), sin[p].astype(np.float64)
        a, b = x[:, :half], x[:, half:]
        return np.concatenate([a * c - b * s, b * c + a * s], axis=1)

    x = qkv.astype(np.float64).reshape(rows, heads + 2 * kv_heads, d)
    q = [rotate(x[t, :heads], positions[t]) for t in range(rows)]
    for t in range(rows):
        keys[slots[t], :, positions[t]] = rotate(x[t, heads:heads + kv_heads], positions[t])
        values[slots[t], :, positions[t]] = x[t, heads + kv_heads:]
    out = np.zeros((rows, heads, d))
    for t in range(rows):
        k = keys[slots[t], :, :positions[t] + 1].astype(np.float64)  # [KVH, n, D]
        v = values[slots[t], :, :positions[t] + 1].astype(np.float64)
        for h in range(heads):
            score = k[h // group] @ q[t][h] * scale
            w = np.exp(score - score.max())
            out[t, h] = (w / w.sum()) @ v[h // group]
    return out.reshape(rows, heads * d)
