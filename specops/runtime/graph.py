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
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

QUERY_SEQLENS = "query_seqlens"
LOGITS_TO_KEEP = "logits_to_keep"
_QUERY_SEQLENS_INDEX = 16


def for_batching(model_file: Path, logits: str = "logits") -> bytes:
    """The serialized graph with every GroupQueryAttention's `query_seqlens` fed by a new
    int32 input [batch], and the node that writes `logits` fed the last `logits_to_keep`
    (int64 [1]) positions only. External data stays where it is (open with its folder set)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_file), load_external_data=False)
    graph = model.graph
    nodes = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    if not nodes:
        raise ValueError(f"{model_file}: no GroupQueryAttention node (not a builder export)")
    if QUERY_SEQLENS not in {i.name for i in graph.input}:
        graph.input.append(helper.make_tensor_value_info(QUERY_SEQLENS, TensorProto.INT32, ["batch_size"]))
    for node in nodes:
        inputs = list(node.input)[:_QUERY_SEQLENS_INDEX]
        inputs += [""] * (_QUERY_SEQLENS_INDEX - len(inputs)) + [QUERY_SEQLENS]
        del node.input[:]
        node.input.extend(inputs)
    head = next((n for n in graph.node if logits in n.output), None)
    if head is None:
        raise ValueError(f"{model_file}: no node writes {logits!r}")
    graph.input.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, [1]))
    hidden, kept = head.input[0], head.input[0] + "/kept"
    graph.initializer.extend([numpy_helper.from_array(np.array([np.iinfo(np.int64).max]), "/logits_to_keep/end"),
                              numpy_helper.from_array(np.array([1]), "/logits_to_keep/axis")])
    at = list(graph.node).index(head)
    graph.node.insert(at, helper.make_node("Neg", [LOGITS_TO_KEEP], ["/logits_to_keep/start"], name="/logits_to_keep/Neg"))
    graph.node.insert(at + 1, helper.make_node("Slice", [hidden, "/logits_to_keep/start", "/logits_to_keep/end",
                                                         "/logits_to_keep/axis"], [kept], name="/logits_to_keep/Slice"))
    head.input[0] = kept
    return model.SerializeToString()
