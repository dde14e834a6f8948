#!/usr/bin/env python
"""Make a same-vocabulary variant of a draft so that onnxruntime-genai's draft-model mode accepts it.

onnxruntime-genai 0.18 refuses a draft whose logits are narrower than the target's
("Target and draft logit dimensions don't match. ..."). Our default draft has 32000 logits rows
(Llama-2 vocabulary), the target 32064 (Llama-2 plus Phi-3's added tokens). The variant's graph:

  * output side: the logits are padded from the draft's width to the target's with a constant
    (-1e9) that can never win an argmax and has probability exp(-1e9) = 0 under softmax,
    so the draft never proposes a target-only id (end-of-turn always comes from the target);
  * input side: ids >= the draft's width cannot be looked up in its embedding (onnxruntime-genai
    feeds the draft every committed token, chat tags such as <|user|> = 32010 included), so a
    Gather through a remap table sends each target-only id to one draft id: the draft's
    end-of-sequence id for the target's end-of-sequence ids, else the draft's unk id (0).
    This is lossy (our own engine expands such a tag into the draft's tokenization of its text,
    which a one-to-one graph cannot do); it only changes what the draft sees, never the output;
  * KV cache: the target's genai_config sets `past_present_share_buffer: true`, and the draft runs
    under the same search options, so genai hands it one max-length buffer as past and present.
    A concat-style (Optimum layout) graph then fails ("The output OrtValue provided for output
    'present.0.key' ... has shape {1,2,18,32} but the computed output shape ... is {1,2,26,32}"),
    so such a graph reads only the valid prefix of the past and pads present back to the buffer
    (accept_shared_kv_buffer); a builder (GroupQueryAttention) graph needs nothing.

Two ways to get the draft's ONNX:
  graph    (default) the draft folder's own ONNX, weights byte-for-byte untouched;
  builder  (--draft-hf DIR) onnxruntime-genai's model builder on the draft's HF checkpoint (int4,
           cpu): the same weights quantized the same way (RTN int4, block 32; the logits of the two
           exports are compared and recorded), GQA layout, cheaper per call inside genai.

It refuses a pair whose shared ids (below the draft's width) mean different pieces, checks the
variant against its source with onnxruntime (exact-length and shared-buffer KV), and writes a
genai_config.json for the draft, the target's tokenizer files (both mean the same text for every
id the draft can see or produce), and same_vocab_draft.json recording what was done. An existing
variant is reused while its sources' hashes are unchanged.

    python scripts/peers/make_same_vocab_draft.py --draft models/draft --target models/target \
        --out build/peers/draft_same_vocab_graph [--draft-hf build/default_models/draft_hf]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

PAD_LOGIT = -1.0e9
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "chat_template.jinja")
FORMAT_VERSION = 1


class DraftVariantError(ValueError):
    pass


# ----------------------------------------------------------------------------------- helpers
def _load_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def _find_onnx(folder: Path) -> Path:
    cfg = folder / "genai_config.json"
    if cfg.exists():
        return folder / _load_json(cfg)["model"]["decoder"]["filename"]
    cands = sorted(p for p in folder.glob("*.onnx"))
    if len(cands) != 1:
        raise DraftVariantError(f"{folder}: expected one .onnx file, found {[p.name for p in cands]}")
    return cands[0]


def _io_shapes(model) -> tuple[dict, dict]:
    def shape(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
    return ({i.name: shape(i) for i in model.graph.input}, {o.name: shape(o) for o in model.graph.output})


def target_vocab_width(target_dir: Path) -> int:
    """The target's logits width (from its ONNX output shape; genai_config's vocab_size as fallback)."""
    import onnx

    onnx_path = _find_onnx(target_dir)
    m = onnx.load(str(onnx_path), load_external_data=False)
    _, outs = _io_shapes(m)
    cfg = _load_json(target_dir / "genai_config.json")
    logits_name = cfg["model"]["decoder"].get("outputs", {}).get("logits", "logits")
    width = outs.get(logits_name, [None])[-1]
    return int(width) if isinstance(width, int) and width > 0 else int(cfg["model"]["vocab_size"])


def decoder_block_from_onnx(onnx_path: Path, hf_config: dict) -> dict:
    """A genai_config `model.decoder` block for a decoder-only ONNX file with separate key/value caches
    (Optimum layout with position_ids, or builder layout without), names read from the graph."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    ins, outs = _io_shapes(m)
    layers = sum(1 for n in ins if n.startswith("past_key_values.") and n.endswith(".key"))
    if layers == 0:
        raise DraftVariantError(f"{onnx_path}: no past_key_values.N.key inputs; not a decoder with a KV cache")
    k0 = ins["past_key_values.0.key"]
    heads = int(hf_config["num_attention_heads"])
    hidden = int(hf_config["hidden_size"])
    head_size = int(hf_config.get("head_dim") or hidden // heads)
    kv_heads = k0[1] if isinstance(k0[1], int) and k0[1] > 0 else int(hf_config.get("num_key_value_heads", heads))
    inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    if "position_ids" in ins:
        inputs["position_ids"] = "position_ids"
    inputs.update({"past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"})
    for name in ("input_ids", "attention_mask"):
        if name not in ins:
            raise DraftVariantError(f"{onnx_path}: missing input {name!r}")
    if "logits" not in outs:
        raise DraftVariantError(f"{onnx_path}: missing output 'logits'")
    return {
        "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
        "filename": onnx_path.name,
        "head_size": head_size,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": int(kv_heads),
        "inputs": inputs,
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"},
    }


def _pieces(tokenizer_json: Path) -> dict[int, str]:
    tok = _load_json(tokenizer_json)
    vocab = tok.get("model", {}).get("vocab", {})
    if isinstance(vocab, list):  # unigram: [[piece, score], ...]
        out = {i: p[0] for i, p in enumerate(vocab)}
    else:
        out = {int(i): p for p, i in vocab.items()}
    for added in tok.get("added_tokens", []):
        out[int(added["id"])] = added["content"]
    return out


def check_shared_pieces(draft_dir: Path, target_dir: Path, shared: int) -> None:
    d, t = _pieces(draft_dir / "tokenizer.json"), _pieces(target_dir / "tokenizer.json")
    bad = [i for i in range(shared) if d.get(i) != t.get(i)]
    if bad:
        i = bad[0]
        raise DraftVariantError(
            f"draft and target tokenizers disagree on {len(bad)} of the {shared} shared ids, first at id {i}: "
            f"target piece {t.get(i)!r}, draft piece {d.get(i)!r}; a same-vocabulary variant would change "
            "what the draft's ids mean")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------- the rewrite
def widen_graph(model, draft_width: int, target_width: int, remap: np.ndarray):
    """Pad the logits output to target_width and remap input ids >= draft_width (in place)."""
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    # --- input side: input_ids -> Gather(remap, input_ids)
    remapped = "input_ids_in_draft_vocab"
    for node in g.node:
        for i, name in enumerate(node.input):
            if name == "input_ids":
                node.input[i] = remapped
    g.initializer.append(numpy_helper.from_array(remap.astype(np.int64), "same_vocab_input_remap"))
    gather = helper.make_node("Gather", ["same_vocab_input_remap", "input_ids"], [remapped], axis=0,
                              name="same_vocab/remap_input_ids")
    # --- output side: logits (draft rows) -> Pad(last axis, constant PAD_LOGIT)
    narrow = "logits_draft_rows"
    producers = [n for n in g.node if "logits" in n.output]
    if len(producers) != 1:
        raise DraftVariantError("expected exactly one node producing 'logits'")
    prod = producers[0]
    prod.output[list(prod.output).index("logits")] = narrow
    for node in g.node:
        for i, name in enumerate(node.input):
            if name == "logits":
                node.input[i] = narrow
    g.initializer.append(numpy_helper.from_array(
        np.array([0, 0, 0, 0, 0, target_width - draft_width], dtype=np.int64), "same_vocab_pads"))
    g.initializer.append(numpy_helper.from_array(np.array(PAD_LOGIT, dtype=np.float32), "same_vocab_pad_value"))
    pad = helper.make_node("Pad", [narrow, "same_vocab_pads", "same_vocab_pad_value"], ["logits"],
                           mode="constant", name="same_vocab/pad_logits")
    g.node.insert(0, gather)
    g.node.append(pad)
    for out in g.output:
        if out.name == "logits":
            dims = out.type.tensor_type.shape.dim
            if len(dims) != 3:
                raise DraftVariantError("expected logits of rank 3 [batch, sequence, vocab]")
            if out.type.tensor_type.elem_type != TensorProto.FLOAT:
                raise DraftVariantError("expected float32 logits")
            dims[2].Clear()
            dims[2].dim_value = target_width
    # keep shape inference from carrying the old width on an intermediate value_info
    for vi in list(g.value_info):
        if vi.name in (narrow, "logits"):
            g.value_info.remove(vi)
    return model


def accept_shared_kv_buffer(model) -> int:
    """Let a concat-style KV graph (Optimum layout) run under onnxruntime-genai's
    `past_present_share_buffer: true`, which the target's config sets and which applies to the
    draft too (both share one GeneratorParams).

    In that mode genai binds one [batch, kv_heads, max_length, head] buffer as both past and
    present, the valid past being its first (attention_mask length - new tokens) positions.
    The graph is made to read only those (Slice) and to return present padded back to the
    buffer's length (Pad by max(buffer - total, 0), so a caller that feeds an exact-length past,
    as before, sees the old behaviour). Returns the number of KV pairs rewritten."""
    from onnx import helper, numpy_helper

    g = model.graph
    past = [i.name for i in g.input if i.name.startswith("past_key_values.")]
    present = [o.name for o in g.output if o.name.startswith("present.")]
    if not past or len(past) != len(present):
        raise DraftVariantError("expected matching past_key_values.* inputs and present.* outputs")
    c = lambda name, arr: g.initializer.append(numpy_helper.from_array(np.array(arr, dtype=np.int64), name))
    c("kvshare/axis1", [1]); c("kvshare/axis2", [2]); c("kvshare/zero", [0])
    c("kvshare/zeros6", [0, 0, 0, 0, 0, 0]); c("kvshare/zeros1", [0])
    pre = [
        helper.make_node("Shape", ["attention_mask"], ["kvshare/mask_shape"]),
        helper.make_node("Gather", ["kvshare/mask_shape", "kvshare/axis1"], ["kvshare/total"], axis=0),
        helper.make_node("Shape", ["input_ids"], ["kvshare/ids_shape"]),
        helper.make_node("Gather", ["kvshare/ids_shape", "kvshare/axis1"], ["kvshare/new"], axis=0),
        helper.make_node("Sub", ["kvshare/total", "kvshare/new"], ["kvshare/past_len"]),
    ]
    post = []
    for name in past:
        valid = f"kvshare/{name}/valid"
        for node in g.node:
            for i, inp in enumerate(node.input):
                if inp == name:
                    node.input[i] = valid
        pre.append(helper.make_node("Slice", [name, "kvshare/zero", "kvshare/past_len", "kvshare/axis2"], [valid]))
    for name, pname in zip(present, [p.replace("present.", "past_key_values.", 1) for p in present]):
        if pname not in past:
            raise DraftVariantError(f"output {name} has no matching input {pname}")
        full = f"kvshare/{name}/full"
        for node in g.node:  # the producer and any internal consumer (attention) use the full tensor
            for i, out in enumerate(node.output):
                if out == name:
                    node.output[i] = full
            for i, inp in enumerate(node.input):
                if inp == name:
                    node.input[i] = full
        p = f"kvshare/{name}"
        post += [
            helper.make_node("Shape", [pname], [p + "/buf_shape"]),
            helper.make_node("Gather", [p + "/buf_shape", "kvshare/axis2"], [p + "/buf"], axis=0),
            helper.make_node("Sub", [p + "/buf", "kvshare/total"], [p + "/gap"]),
            helper.make_node("Max", [p + "/gap", "kvshare/zeros1"], [p + "/extra"]),
            # pads = [0,0,0,0, 0,0,extra,0] for [batch, heads, seq, head]
            helper.make_node("Concat", ["kvshare/zeros6", p + "/extra", "kvshare/zeros1"], [p + "/pads"], axis=0),
            helper.make_node("Pad", [full, p + "/pads"], [name], mode="constant"),
        ]
    for i, node in enumerate(pre):
        g.node.insert(i, node)
    g.node.extend(post)
    for out in g.output:
        if out.name in present:
            out.type.tensor_type.shape.dim[2].Clear()
            out.type.tensor_type.shape.dim[2].dim_param = "present_sequence_length"
    return len(past) // 2


def verify_variant(src_onnx: Path, variant_onnx: Path, draft_width: int, target_width: int,
                   shared: bool = True, kv_dims: tuple[int, int] | None = None, seed: int = 0) -> float:
    """Run the original and the variant with onnxruntime on the same ids (prefill, then a 3-token
    append) and the variant again through a shared max-length KV buffer; return the largest
    |logit difference| on the draft's rows (the padded rows must equal PAD_LOGIT)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    a = ort.InferenceSession(str(src_onnx), so, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(variant_onnx), so, providers=["CPUExecutionProvider"])
    pasts = [i for i in a.get_inputs() if i.name.startswith("past_key_values.")]
    has_pos = any(i.name == "position_ids" for i in a.get_inputs())
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, draft_width, size=(1, 12))

    def feeds(chunk, start, past):
        f = {"input_ids": chunk, "attention_mask": np.ones((1, start + chunk.shape[1]), np.int64)}
        if has_pos:
            f["position_ids"] = np.arange(start, start + chunk.shape[1])[None]
        f.update(past)
        return f

    def empty(length):
        def dim(i, fallback):
            return lambda p: p.shape[i] if isinstance(p.shape[i], int) else fallback
        kv = dim(1, kv_dims[0] if kv_dims else None)
        hd = dim(3, kv_dims[1] if kv_dims else None)
        return {p.name: np.zeros((1, kv(p), length, hd(p)), np.float32) for p in pasts}

    def run(sess, chunk, start, past):
        outs = sess.run(None, feeds(chunk, start, past))
        names = [o.name for o in sess.get_outputs()]
        res = dict(zip(names, outs))
        return res["logits"], {p.name: res[p.name.replace("past_key_values.", "present.", 1)] for p in pasts}

    worst = 0.0
    la, pa = run(a, ids[:, :9], 0, empty(0))
    lb, pb = run(b, ids[:, :9], 0, empty(0))
    la2, _ = run(a, ids[:, 9:], 9, pa)
    lb2, _ = run(b, ids[:, 9:], 9, pb)
    for x, y in ((la, lb), (la2, lb2)):
        if y.shape[-1] != target_width or (target_width > draft_width and not np.all(y[..., draft_width:] == PAD_LOGIT)):
            raise DraftVariantError("variant's padded logits rows are not the pad value")
        worst = max(worst, float(np.abs(x - y[..., :draft_width]).max()))
    if not shared:
        return worst
    # shared buffer: one max-length buffer per KV tensor, valid prefix = total - new
    buf_len = 32
    buf = empty(buf_len)
    lc, pc = run(b, ids[:, :9], 0, buf)
    for k, v in pc.items():
        if v.shape[2] != buf_len:
            raise DraftVariantError(f"shared-buffer present {k} has length {v.shape[2]}, expected {buf_len}")
    lc2, _ = run(b, ids[:, 9:], 9, pc)
    worst = max(worst, float(np.abs(la - lc[..., :draft_width]).max()),
                float(np.abs(la2 - lc2[..., :draft_width]).max()))
    return worst


def build_with_model_builder(draft_hf: Path, tokenizer_dir: Path, out: Path) -> Path:
    """Rebuild the draft from its HF checkpoint with onnxruntime-genai's model builder (int4, CPU):
    GroupQueryAttention layout, which runs with a shared KV buffer and no rewrite. The builder wants
    tokenizer files next to the checkpoint, so it reads a scratch copy (symlinks) with the draft's."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="draft_hf_") as scratch:
        hf = Path(scratch) / "hf"
        hf.mkdir()
        for f in Path(draft_hf).iterdir():
            (hf / f.name).symlink_to(f.resolve())
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
            if (tokenizer_dir / name).exists() and not (hf / name).exists():
                (hf / name).symlink_to((tokenizer_dir / name).resolve())
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
               "-p", "int4", "-e", "cpu", "-c", str(Path(scratch) / "cache")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not (out / "genai_config.json").exists():
            raise DraftVariantError(f"model builder failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return out


def compare_drafts(a_onnx: Path, b_onnx: Path, width: int, kv_dims_a, kv_dims_b, seed: int = 1) -> dict:
    """Prefill logits of two exports of the same draft on the same random ids."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    ids = rng.integers(3, width, size=(1, 48))
    res = []
    for path, (kv, hd) in ((a_onnx, kv_dims_a), (b_onnx, kv_dims_b)):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}
        f = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "position_ids" in names:
            f["position_ids"] = np.arange(ids.shape[1])[None]
        for n in names:
            if n.startswith("past_key_values."):
                f[n] = np.zeros((1, kv, 0, hd), np.float32)
        res.append(sess.run(["logits"], f)[0][..., :width])
    a, b = res
    return {"max_abs_logit_diff": float(np.abs(a - b).max()), "logit_abs_max": float(np.abs(a).max()),
            "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).mean())}


def make_same_vocab_draft(draft_dir, target_dir, out_dir, *, draft_hf=None, force: bool = False) -> Path:
    """Build (or reuse, when the sources are unchanged) the variant in out_dir; returns out_dir.

    draft_dir: the draft model folder (its tokenizer, config.json, and, without draft_hf, its ONNX).
    draft_hf:  optional HF checkpoint of the same draft; the ONNX then comes from onnxruntime-genai's
               model builder instead of draft_dir (same weights, GQA layout, cheaper per pass)."""
    import onnx

    draft_dir, target_dir, out_dir = Path(draft_dir), Path(target_dir), Path(out_dir)
    builder_tmp = None
    if draft_hf is not None:
        draft_hf = Path(draft_hf)
        hf_stamp = {"method": "builder", "draft_hf_sha256": {
            f.name: _sha256(f) for f in sorted(draft_hf.iterdir()) if f.is_file()}}
    else:
        hf_stamp = {"method": "graph"}
    orig_onnx = _find_onnx(draft_dir)
    hf_cfg = _load_json(draft_dir / "config.json") if (draft_dir / "config.json").exists() else {}
    if draft_hf is not None and not hf_cfg:
        hf_cfg = _load_json(draft_hf / "config.json")
    tgt_cfg = _load_json(target_dir / "genai_config.json")
    target_width = target_vocab_width(target_dir)

    m = onnx.load(str(orig_onnx), load_external_data=False)
    _, outs = _io_shapes(m)
    draft_width = outs["logits"][-1]
    if not isinstance(draft_width, int) or draft_width <= 0:
        raise DraftVariantError(f"{orig_onnx}: logits width is not static ({draft_width!r})")
    if draft_width > target_width:
        raise DraftVariantError(f"draft logits ({draft_width}) are wider than the target's ({target_width})")

    data = orig_onnx.with_name(orig_onnx.name + ".data")
    stamp = {"format": FORMAT_VERSION, **hf_stamp, "draft_onnx_sha256": _sha256(orig_onnx),
             "draft_onnx_data_sha256": _sha256(data) if data.exists() else None,
             "target_genai_config_sha256": _sha256(target_dir / "genai_config.json"),
             "draft_width": draft_width, "target_width": target_width, "pad_logit": PAD_LOGIT}
    info_path = out_dir / "same_vocab_draft.json"
    if not force and info_path.exists():
        try:
            old = _load_json(info_path)
            if all(old.get(k) == v for k, v in stamp.items()) and (out_dir / "model.onnx").exists():
                return out_dir
        except (OSError, ValueError):
            pass

    check_shared_pieces(draft_dir, target_dir, draft_width)

    # target-only ids: eos-like ones -> draft eos, the rest -> draft unk (0)
    t_eos = tgt_cfg["model"].get("eos_token_id", [])
    t_eos = set([t_eos] if isinstance(t_eos, int) else t_eos)
    own_genai = draft_dir / "genai_config.json"
    d_eos = hf_cfg.get("eos_token_id") or (
        _load_json(own_genai)["model"].get("eos_token_id", 2) if own_genai.exists() else 2)
    d_eos = int(d_eos[0] if isinstance(d_eos, list) else d_eos)
    remap = np.arange(target_width, dtype=np.int64)
    for i in range(draft_width, target_width):
        remap[i] = d_eos if i in t_eos else 0

    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        src_onnx, draft_genai = orig_onnx, None
        if (draft_dir / "genai_config.json").exists():
            draft_genai = _load_json(draft_dir / "genai_config.json")
        if draft_hf is not None:
            built = build_with_model_builder(draft_hf, draft_dir, tmp.with_name(tmp.name + ".builder"))
            builder_tmp = built
            src_onnx, draft_genai = _find_onnx(built), _load_json(built / "genai_config.json")
            dec = draft_genai["model"]["decoder"]
            orig_dec = (decoder_block_from_onnx(orig_onnx, hf_cfg) if hf_cfg else dec)
            stamp["builder_vs_draft_onnx"] = compare_drafts(
                orig_onnx, src_onnx, draft_width, (orig_dec["num_key_value_heads"], orig_dec["head_size"]),
                (dec["num_key_value_heads"], dec["head_size"]))
        _write_variant(tmp, src_onnx, hf_cfg, draft_genai, tgt_cfg, target_dir, draft_width, target_width,
                       remap, stamp, draft_dir, t_eos, d_eos)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if builder_tmp is not None:
            shutil.rmtree(builder_tmp, ignore_errors=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out_dir)
    return out_dir


def _write_variant(tmp, src_onnx, hf_cfg, draft_genai, tgt_cfg, target_dir, draft_width, target_width, remap, stamp,
                   draft_dir, t_eos, d_eos) -> None:
    import onnx

    if draft_genai is not None:
        decoder = json.loads(json.dumps(draft_genai["model"]["decoder"]))
        draft_ctx = int(draft_genai["model"].get("context_length", 2048))
        draft_type = draft_genai["model"].get("type", "llama")
    else:
        decoder = decoder_block_from_onnx(src_onnx, hf_cfg)
        draft_ctx = int(hf_cfg.get("max_position_embeddings", 2048))
        draft_type = hf_cfg.get("model_type", "llama")
    decoder["filename"] = "model.onnx"
    m = onnx.load(str(src_onnx))  # with any external data
    if draft_width < target_width:
        widen_graph(m, draft_width, target_width, remap)
    # concat-style KV (Optimum layout) needs the shared-buffer rewrite; the builder's GQA layout does not
    concat_kv = not any(n.op_type == "GroupQueryAttention" for n in m.graph.node)
    if concat_kv:
        accept_shared_kv_buffer(m)
    big = m.ByteSize() > 1_800_000_000
    onnx.save_model(m, str(tmp / "model.onnx"), save_as_external_data=big,
                    location="model.onnx.data" if big else None, all_tensors_to_one_file=True)
    # (no onnx.checker: builder graphs use ORT-only ops such as SimplifiedLayerNormalization;
    # verify_variant below loads and runs the variant with onnxruntime instead)
    max_err = verify_variant(src_onnx, tmp / "model.onnx", draft_width, target_width, shared=concat_kv,
                             kv_dims=(decoder["num_key_value_heads"], decoder["head_size"]))
    if max_err > 1e-3:
        raise DraftVariantError(f"variant's logits differ from the draft's by {max_err:.3g}")

    decoder["session_options"] = json.loads(json.dumps(tgt_cfg["model"]["decoder"].get(
        "session_options", decoder["session_options"])))
    model_cfg = {k: tgt_cfg["model"][k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                 if k in tgt_cfg["model"]}
    model_cfg.update({
        "context_length": min(int(tgt_cfg["model"].get("context_length", 2048)), draft_ctx),
        "decoder": decoder, "type": draft_type, "vocab_size": target_width})
    search = dict(tgt_cfg.get("search", {}))
    search["max_length"] = model_cfg["context_length"]
    with open(tmp / "genai_config.json", "w") as f:
        json.dump({"model": model_cfg, "search": search}, f, indent=2)
    for name in TOKENIZER_FILES:
        if (target_dir / name).exists():
            shutil.copy(target_dir / name, tmp / name)
    if hf_cfg:
        cfg_out = dict(hf_cfg)
        cfg_out["vocab_size"] = target_width
        with open(tmp / "config.json", "w") as f:
            json.dump(cfg_out, f, indent=2)
    stamp.update({
        "draft_dir": str(draft_dir.resolve()), "target_dir": str(target_dir.resolve()),
        "input_remap": {"draft_eos": d_eos, "unk": 0,
                        "target_eos_ids": sorted(int(i) for i in t_eos if draft_width <= i < target_width)},
        "note": ("logits padded with pad_logit, target-only input ids remapped; "
                 + ("ONNX rebuilt from the HF checkpoint by onnxruntime-genai's model builder"
                    if "builder_vs_draft_onnx" in stamp else "weights untouched")),
        "verify_max_abs_logit_diff": max_err,
        "kv_rewritten_for_shared_buffer": concat_kv,
    })
    with open(tmp / "same_vocab_draft.json", "w") as f:
        json.dump(stamp, f, indent=2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draft", required=True, type=Path)
    ap.add_argument("--target", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--draft-hf", type=Path, default=None,
                    help="HF checkpoint of the draft: rebuild it with onnxruntime-genai's model builder "
                         "(GQA layout) instead of rewriting the draft folder's ONNX")
    ap.add_argument("--force", action="store_true", help="rebuild even if the sources are unchanged")
    args = ap.parse_args(argv)
    try:
        out = make_same_vocab_draft(args.draft, args.target, args.out, draft_hf=args.draft_hf, force=args.force)
    except DraftVariantError as e:
        print(f"refused: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(out), **_load_json(out / "same_vocab_draft.json")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
