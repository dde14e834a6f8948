"""In-memory rewrites of a builder graph before onnxruntime opens it (the folder is untouched).

`with_query_seqlens`: GroupQueryAttention refuses a batch of several sequences that each bring
more than one new token on top of a cache ("batch_size must be 1 when sequence_length > 1 and
past context is given") unless it is told how many of each row's tokens are real: its optional
`query_seqlens` input (onnxruntime >= 1.2x; index 16). The builder leaves it unconnected; wired
to a graph input, one pass verifies every sequence's proposals, each row padded to the longest.
Rows computed this way are bit for bit what the same sequence's own pass of as many tokens
gives (checked by tests/test_batch.py).
"""
from __future__ import annotations

from pathlib import Path

QUERY_SEQLENS = "query_seqlens"
_QUERY_SEQLENS_INDEX = 16


def with_query_seqlens(model_file: Path) -> bytes:
    """The serialized graph with every GroupQueryAttention's `query_seqlens` fed by a new
    int32 input [batch]. External data stays where it is (open with its folder set)."""
    import onnx
    from onnx import TensorProto, helper

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
    return model.SerializeToString()
